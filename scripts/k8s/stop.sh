#!/usr/bin/env bash
# Stops the kube-apiserver and etcd that start.sh started in DIR (by their pid files only).
#
#   scripts/k8s/stop.sh DIR [apiserver|etcd]    (both when none is named)
set -u
DIR=${1:?usage: stop.sh DIR [apiserver|etcd]}
NAMES=${2:-"apiserver etcd"}
for n in $NAMES; do
  f="$DIR/$n.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$f"
done
exit 0
