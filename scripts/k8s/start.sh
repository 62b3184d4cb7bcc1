#!/usr/bin/env bash
# Starts etcd and a real kube-apiserver on 127.0.0.1 for the Kubernetes tests.
#
#   scripts/k8s/start.sh DIR APISERVER_PORT ETCD_PORT
#
# K8S_BIN names the directory of build.sh's binaries (default target/k8s/bin). Writes DIR/kubeconfig
# (an admin in system:masters, by a static token), DIR/token, DIR/pki/ca.crt and the servers' logs
# and pid files. With WATCH_PID set, both servers are stopped when that process is gone, so a test
# binary that exits or is killed leaves nothing running.
#
# There is no kubelet and no controller manager: Pods never run (a test plays the kubelet by
# patching a Pod's status), no `default` ServiceAccount is made, so the ServiceAccount admission
# plugin is off (SA_ADMISSION=1 keeps it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${1:?usage: start.sh DIR APISERVER_PORT ETCD_PORT}
APORT=${2:?usage: start.sh DIR APISERVER_PORT ETCD_PORT}
EPORT=${3:?usage: start.sh DIR APISERVER_PORT ETCD_PORT}
PPORT=$((EPORT + 1))
K8S_BIN=${K8S_BIN:-$ROOT/target/k8s/bin}
mkdir -p "$DIR/pki" "$DIR/etcd-data"
DIR=$(cd "$DIR" && pwd)
P=$DIR/pki

if [ ! -f "$P/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=zident-test-kubernetes-ca" \
    -keyout "$P/ca.key" -out "$P/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$P/apiserver.key" -out "$P/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' >"$P/ext.cnf"
  openssl x509 -req -in "$P/apiserver.csr" -CA "$P/ca.crt" -CAkey "$P/ca.key" \
    -CAcreateserial -days 3650 -extfile "$P/ext.cnf" -out "$P/apiserver.crt" 2>/dev/null
  openssl genrsa -out "$P/sa.key" 2048 2>/dev/null
  openssl rsa -in "$P/sa.key" -pubout -out "$P/sa.pub" 2>/dev/null
  openssl rand -hex 24 >"$DIR/token"
  echo "$(cat "$DIR/token"),admin,admin-uid,\"system:masters\"" >"$P/tokens.csv"
fi
TOKEN=$(cat "$DIR/token")

# etcd is left alone when it is still running (a test that stops only the API server starts it
# again with the same DIR).
if ! { [ -f "$DIR/etcd.pid" ] && kill -0 "$(cat "$DIR/etcd.pid")" 2>/dev/null; }; then
ETCD_UNSUPPORTED_ARCH= "$K8S_BIN/etcd" --name s1 --data-dir "$DIR/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$EPORT" --advertise-client-urls "http://127.0.0.1:$EPORT" \
  --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
  --initial-cluster "s1=http://127.0.0.1:$PPORT" --initial-cluster-state new \
  --quota-backend-bytes 1073741824 >>"$DIR/etcd.log" 2>&1 &
echo $! >"$DIR/etcd.pid"
for _ in $(seq 1 200); do
  curl -fsS "http://127.0.0.1:$EPORT/health" 2>/dev/null | grep -q true && break
  sleep 0.1
done
fi

ADMISSION=()
[ "${SA_ADMISSION:-0}" = 1 ] || ADMISSION=(--disable-admission-plugins=ServiceAccount)
"$K8S_BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$EPORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$APORT" --insecure-port=0 \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --api-audiences=https://kubernetes.default.svc \
  --service-cluster-ip-range=10.96.0.0/16 \
  --allow-privileged=true --profiling=false --endpoint-reconciler-type=none \
  "${ADMISSION[@]}" >>"$DIR/apiserver.log" 2>&1 &
echo $! >"$DIR/apiserver.pid"

if [ -n "${WATCH_PID:-}" ]; then
  (
    while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 1; done
    bash "$ROOT/scripts/k8s/stop.sh" "$DIR"
  ) </dev/null >/dev/null 2>&1 &
fi

ready=
for _ in $(seq 1 900); do
  if curl -fsS --cacert "$P/ca.crt" -H "Authorization: Bearer $TOKEN" \
    "https://127.0.0.1:$APORT/readyz" 2>/dev/null | grep -q '^ok$'; then
    ready=1
    break
  fi
  kill -0 "$(cat "$DIR/apiserver.pid")" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "kube-apiserver did not become ready; the end of $DIR/apiserver.log:" >&2
  tail -20 "$DIR/apiserver.log" >&2
  exit 1
fi

cat >"$DIR/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$APORT
    certificate-authority: $P/ca.crt
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
KUBECONFIG
echo "kube-apiserver ready on https://127.0.0.1:$APORT; KUBECONFIG=$DIR/kubeconfig"
