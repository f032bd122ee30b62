#!/usr/bin/env bash
# Builds the parts of a real node and a current Kubernetes, idempotently:
#
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
#     kube-proxy at a current release, from the Go module proxy;
#   - kubelet, kube-scheduler and kube-proxy 1.20.2, the release of setup.sh's
#     control plane, from Debian's kubernetes source package with Debian's
#     Go 1.19, as setup.sh builds that (k8s-debian.sh); step k8s-1.20 only,
#     not part of all;
#   - etcd 3.6 from the Go module proxy (Debian bookworm's etcd is 3.4);
#   - containerd, runc and the CNI plugins from Debian;
#   - a static pause binary (gcc -static) and its image tar;
#   - the CSI hostpath driver, the external-snapshotter's snapshot-controller
#     and csi-snapshotter, the external-provisioner and the
#     node-driver-registrar, from their Go modules.
#
# Binaries are cached under ~/.cache/kubestow/<name>-<version>/bin, so a warm
# run takes seconds and a fresh machine builds everything from registries
# alone (Go module proxy, Debian). Each cache directory holds BUILD_SECONDS,
# the cold build time. `just test` and `just setup-node` run it; `just test`
# also runs the loopback integration suite on its kube-apiserver,
# kube-controller-manager and etcd (KUBESTOW_TEST_K8S_VERSION=1.37.2).
#
#   bash tests/env/setup-node.sh [all|k8s|k8s-1.20|etcd|debian|pause|csi|hostpath]...
set -euo pipefail

CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
# shellcheck source=tests/env/k8s-debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/k8s-debian.sh"
# The newest release from 1.34 on that builds and runs here (1.34.4 does too:
# KUBESTOW_K8S_VERSION=1.34.4). kubelet 1.35 and later refuse cgroup v1 unless
# the config sets failCgroupV1: false, as node-up.sh does.
K8S_VERSION="${KUBESTOW_K8S_VERSION:-1.37.2}"
ETCD_VERSION=3.6.16
# The external-snapshotter release built against the same Kubernetes minor
# (8.7.0 requires k8s.io/* v0.37; 8.4.0 requires v0.34).
SNAPSHOTTER_VERSION="${KUBESTOW_SNAPSHOTTER_VERSION:-8.7.0}"
# The external-provisioner sidecar. The Go module proxy reachable here serves
# exact versions of .../external-provisioner/v6 (v5.3.0 too) but refuses the
# CSI hostpath driver and the node-driver-registrar at every version tried
# (403 "This module version is not available"). So the driver is our own small
# hostpath driver (tests/env/csi-hostpath, test-only Go), which also answers
# the kubelet's plugin registration that the registrar would.
PROVISIONER_VERSION=6.4.0
CSI_SPEC_VERSION=1.13.0
PAUSE_VERSION=1

NICE=(nice -n 19)
log() { printf '[setup-node] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
mkdir -p "$CACHE"

# go_build_module NAME VERSION MODULE@VERSION 'extra go.mod lines' LDFLAGS TAGS PKG...
# Builds main packages of MODULE in a scratch module that requires it, into
# $CACHE/NAME-VERSION/bin. A scratch module is needed where the module's
# go.mod has replace directives (go install refuses those). BUILD_SECONDS is
# written last and marks a finished build.
go_build_module() {
  local name=$1 version=$2 modver=$3 extra=$4 ldflags=$5 tags=$6
  shift 6
  local out="$CACHE/$name-$version"
  [ -f "$out/BUILD_SECONDS" ] && return 0
  # Debian bookworm's Go (1.19) is too old for these modules; the machines'
  # system Go (1.26) builds them.
  command -v go >/dev/null 2>&1 || { log "no go on PATH: $name $version needs Go 1.26 or later"; exit 1; }
  log "building $name $version: $* (go $(go env GOVERSION))"
  local work="$CACHE/build-$name-$version"
  rm -rf "$work"; mkdir -p "$work"
  {
    printf 'module kubestow.local/build/%s\n\n' "$name"
    printf '%s\n' "$extra"
    printf 'require %s\n' "${modver/@/ }"
  } >"$work/go.mod"
  local start=$SECONDS
  (
    cd "$work"
    export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
    "${NICE[@]}" go build -trimpath -tags="$tags" -ldflags="$ldflags" -o "$work/bin/" "$@"
  )
  rm -rf "$out"; mkdir -p "$out/bin"
  install -m 0755 "$work"/bin/* "$out/bin/"
  cp "$work/go.mod" "$work/go.sum" "$out/"
  echo "$((SECONDS - start))" >"$out/BUILD_SECONDS"
  rm -rf "$work"
  log "built $name $version in $((SECONDS - start)) s: $(ls "$out/bin" | tr '\n' ' ')"
}

build_k8s() {
  local v=$K8S_VERSION minor=${K8S_VERSION#*.}
  minor=${minor%%.*}
  [ -f "$CACHE/kubernetes-$v/BUILD_SECONDS" ] && return 0
  # kubernetes' go.mod replaces each staging module k8s.io/<name> with
  # ./staging/src/k8s.io/<name>; the proxy serves them as k8s.io/<name> v0.<minor>.<patch>.
  local gomod
  gomod=$(cd "$CACHE" && GOFLAGS='' go mod download -json "k8s.io/kubernetes@v$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || { log "go mod download k8s.io/kubernetes@v$v failed"; exit 1; }
  local extra
  extra=$(
    grep -E '^(go|godebug) ' "$gomod"
    echo
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/.*#replace \1 => \1 v0.'"${v#*.}"'#p' "$gomod"
  )
  local ld="" k val
  for k in gitVersion=v$v gitMajor=1 gitMinor=$minor gitTreeState=clean buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ); do
    val=${k#*=}; k=${k%%=*}
    ld+=" -X k8s.io/client-go/pkg/version.$k=$val -X k8s.io/component-base/version.$k=$val"
  done
  go_build_module kubernetes "$v" "k8s.io/kubernetes@v$v" "$extra" \
    "all=-s -w$ld" selinux,notest,grpcnotrace \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
}

# Kubernetes 1.20.2's node components, with the recipe and build key of
# setup.sh's kube-apiserver and kube-controller-manager (k8s-debian.sh), into
# $CACHE/kubernetes-1.20.2-reflect2fix-node. Each must print the version.
build_k8s_120() {
  local v=$K8S_DEBIAN_VERSION out="$CACHE/kubernetes-$K8S_DEBIAN_BUILD-node"
  [ -f "$out/BUILD_SECONDS" ] && return 0
  local bins=(kubelet kube-scheduler kube-proxy) start=$SECONDS b got
  log "building ${bins[*]} $v from Debian source (about 20 minutes on 2 busy cores)"
  rm -rf "$out"
  k8s_debian_build "$CACHE/build-kubernetes-$K8S_DEBIAN_BUILD-node" "$out/bin" "${bins[@]}"
  for b in "${bins[@]}"; do
    got=$("$out/bin/$b" --version 2>&1) || true
    [ "$got" = "Kubernetes v$v" ] || { log "$b --version printed '$got', not 'Kubernetes v$v'"; exit 1; }
  done
  echo "$((SECONDS - start))" >"$out/BUILD_SECONDS"
  log "built ${bins[*]} $v in $((SECONDS - start)) s"
}

build_etcd() {
  go_build_module etcd "$ETCD_VERSION" "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" "" "-s -w" "" \
    go.etcd.io/etcd/server/v3
  # The main package is the module root, which go names "server".
  local bin="$CACHE/etcd-$ETCD_VERSION/bin"
  [ -x "$bin/etcd" ] || mv "$bin/server" "$bin/etcd"
}

install_debian() {
  local need=() pair
  for pair in containerd:containerd runc:runc buildah:buildah podman:podman ip:iproute2 gcc:gcc stunnel4:stunnel4; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/aarch64-linux-gnu/libc.a ] || need+=(libc6-dev)
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# A pause container: a static binary that sleeps until SIGINT/SIGTERM and reaps
# children, as Kubernetes' build/pause/linux/pause.c does. Nothing can be
# pulled here, so containerd's sandbox_image is this local image.
build_pause() {
  local out="$CACHE/pause-$PAUSE_VERSION"
  [ -f "$out/pause.tar" ] && return 0
  install_debian
  local work="$CACHE/build-pause"
  rm -rf "$work"; mkdir -p "$work" "$out/bin"
  cat >"$work/pause.c" <<'EOF'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int signo) { (void)signo; _exit(0); }
static void sigreap(int signo) { (void)signo; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction down = {.sa_handler = sigdown}, reap = {.sa_handler = sigreap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &down, NULL);
  sigaction(SIGTERM, &down, NULL);
  sigaction(SIGCHLD, &reap, NULL);
  for (;;) pause();
  return 42;
}
EOF
  gcc -Os -static -o "$out/bin/pause" "$work/pause.c"
  strip "$out/bin/pause"
  local ctr
  ctr=$(buildah from scratch)
  buildah copy "$ctr" "$out/bin/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  buildah commit -q "$ctr" "localhost/kubestow/pause:$PAUSE_VERSION" >/dev/null
  buildah rm "$ctr" >/dev/null
  rm -f "$work/pause.tar"
  buildah push -q "localhost/kubestow/pause:$PAUSE_VERSION" "docker-archive:$work/pause.tar:localhost/kubestow/pause:$PAUSE_VERSION"
  mv "$work/pause.tar" "$out/pause.tar"
  rm -rf "$work"
  log "pause image: $out/pause.tar (localhost/kubestow/pause:$PAUSE_VERSION)"
}

build_csi() {
  # external-snapshotter's go.mod replaces its client module with ./client;
  # the proxy serves that as github.com/kubernetes-csi/external-snapshotter/client/v8.
  go_build_module external-snapshotter "$SNAPSHOTTER_VERSION" \
    "github.com/kubernetes-csi/external-snapshotter/v8@v$SNAPSHOTTER_VERSION" \
    "replace github.com/kubernetes-csi/external-snapshotter/client/v8 => github.com/kubernetes-csi/external-snapshotter/client/v8 v$SNAPSHOTTER_VERSION" \
    "-s -w -X main.version=v$SNAPSHOTTER_VERSION" "" \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller \
    github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter
  # The VolumeSnapshot CRDs of the same release, and the VolumeGroupSnapshot
  # ones where it has them (snapshot-controller 8.7 waits for those).
  local out="$CACHE/external-snapshotter-$SNAPSHOTTER_VERSION"
  if [ ! -f "$out/crd/.complete" ]; then
    local dir
    dir=$(cd "$CACHE" && GOFLAGS='' go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@v$SNAPSHOTTER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    rm -rf "$out/crd" "$out/crd.tmp"
    mkdir -p "$out/crd.tmp"
    cp "$dir"/config/crd/*snapshot.storage.k8s.io_*.yaml "$out/crd.tmp/"
    chmod u+w "$out/crd.tmp"/*
    touch "$out/crd.tmp/.complete"
    mv "$out/crd.tmp" "$out/crd"
  fi
  build_provisioner
  build_hostpath
}

build_provisioner() {
  local v=$PROVISIONER_VERSION mod=github.com/kubernetes-csi/external-provisioner/v6
  [ -f "$CACHE/external-provisioner-$v/BUILD_SECONDS" ] && return 0
  # Its go.mod pins the k8s.io staging modules with replace directives, which
  # a requiring module ignores: copy them into the scratch module.
  local gomod extra
  gomod=$(cd "$CACHE" && GOFLAGS='' go mod download -json "$mod@v$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || { log "go mod download $mod@v$v failed"; exit 1; }
  extra=$(grep -E '^(go|godebug) ' "$gomod"; echo; grep -E '^replace ' "$gomod")
  go_build_module external-provisioner "$v" "$mod@v$v" "$extra" \
    "-s -w -X main.version=v$v" "" "$mod/cmd/csi-provisioner"
}

# Our hostpath CSI driver: the source is in the repository, its dependencies
# (the CSI spec, gRPC, the kubelet's plugin-registration API) come from the
# Go module proxy. Keyed by a hash of the source, so an edit rebuilds it.
build_hostpath() {
  local src
  src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/csi-hostpath"
  local v
  v=$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-12)
  local out="$CACHE/csi-hostpath-$v"
  [ -f "$out/BUILD_SECONDS" ] && return 0
  log "building csi-hostpath $v"
  local work="$CACHE/build-csi-hostpath"
  rm -rf "$work"; mkdir -p "$work"
  cp "$src/main.go" "$src/go.mod" "$src/go.sum" "$work/"
  local start=$SECONDS
  (
    cd "$work"
    export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
    "${NICE[@]}" go build -trimpath -ldflags="-s -w" -o "$work/bin/csi-hostpath" .
  )
  rm -rf "$out"; mkdir -p "$out/bin"
  install -m 0755 "$work/bin/csi-hostpath" "$out/bin/"
  echo "$((SECONDS - start))" >"$out/BUILD_SECONDS"
  ln -sfn "$out" "$CACHE/csi-hostpath-current"
  rm -rf "$work"
  log "built csi-hostpath in $((SECONDS - start)) s"
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(all)
for s in "${steps[@]}"; do
  case $s in
    all) install_debian; build_etcd; build_k8s; build_pause; build_csi ;;
    k8s) build_k8s ;;
    k8s-1.20) build_k8s_120 ;;
    etcd) build_etcd ;;
    debian) install_debian ;;
    pause) build_pause ;;
    csi) build_csi ;;
    hostpath) build_hostpath ;;
    *) log "unknown step $s"; exit 2 ;;
  esac
done
log "ready under $CACHE"
