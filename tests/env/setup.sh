#!/usr/bin/env bash
# Installs and builds the real test servers (etcd, kube-apiserver,
# kube-controller-manager, Garage) idempotently. Slow artefacts are cached
# under ~/.cache/kubestow keyed by version, so a warm run takes seconds while a
# fresh machine still builds everything from registries alone.
set -euo pipefail

CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
K8S_VERSION=1.20.2
# The build key changes whenever the build recipe changes, so caches rebuild.
# reflect2fix: Debian's 1.20.2 vendors reflect2 1.0.1, which crashes
# (SIGSEGV) under Go >= 1.18 on the first custom-resource write; the build
# swaps in Debian's reflect2 1.0.2.
K8S_BUILD="$K8S_VERSION-reflect2fix"
GARAGE_VERSION=2.5.0
K8S_BIN="$CACHE/kubernetes-$K8S_BUILD/bin"
GARAGE_ROOT="$CACHE/garage-$GARAGE_VERSION"
mkdir -p "$CACHE"

log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_pkgs=()
for pair in etcd:etcd-server go:golang-go rsync:rsync jq:jq setpriv:util-linux kubectl:kubernetes-client; do
  cmd="${pair%%:*}"; pkg="${pair#*:}"
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
# restic is the baseline of `just bench`; cheap to install with the rest.
command -v restic >/dev/null 2>&1 || need_pkgs+=(restic)
# The metrics tests push to a real Pushgateway.
command -v prometheus-pushgateway >/dev/null 2>&1 || need_pkgs+=(prometheus-pushgateway)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# etcd-server's package starts a system etcd on :2379 under systemd; tests run
# their own on free ports, so the system one is irrelevant (and absent without systemd).

if [ ! -x "$K8S_BIN/kube-apiserver" ] || [ ! -x "$K8S_BIN/kube-controller-manager" ]; then
  log "building kube-apiserver and kube-controller-manager $K8S_VERSION from Debian source (several minutes)"
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/kubestow-src.sources >/dev/null
    $SUDO apt-get update -qq
  fi
  work="$CACHE/build-k8s"
  rm -rf "$work"; mkdir -p "$work"
  (cd "$work" && apt-get source -qq kubernetes >/dev/null 2>&1 || apt-get source kubernetes)
  src=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$src" ] || { log "apt-get source kubernetes produced no tree"; exit 1; }
  # See K8S_BUILD above.
  # Kubernetes 1.20 builds in GOPATH mode, which current Go (first on PATH on
  # these machines) no longer supports; Debian's Go 1.19 builds it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang-github-modern-go-reflect2-dev golang-1.19-go >/dev/null
  reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$reflect2_src/go_above_118.go" ] || { log "Debian's reflect2 lacks go_above_118.go; cannot fix the apiserver build"; exit 1; }
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$src/vendor/github.com/modern-go/reflect2"
  cp "$reflect2_src"/*.go "$src/vendor/github.com/modern-go/reflect2/"
  (
    cd "$src"
    mkdir -p .go/src/k8s.io
    ln -sfn "$src" .go/src/k8s.io/kubernetes
    cd .go/src/k8s.io/kubernetes
    export PATH="/usr/lib/go-1.19/bin:$PATH"
    export GOPATH="$src/.go" CGO_ENABLED=0 GO111MODULE=off GOFLAGS=
    export GOCACHE="$CACHE/go-build-cache"
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
  )
  mkdir -p "$K8S_BIN"
  for b in kube-apiserver kube-controller-manager; do
    f=$(find "$src/_output" -type f -name "$b" | head -n1)
    [ -n "$f" ] || { log "build produced no $b"; exit 1; }
    install -m 0755 "$f" "$K8S_BIN/$b"
  done
  rm -rf "$work"
fi

if [ ! -x "$GARAGE_ROOT/bin/garage" ]; then
  log "cargo install garage $GARAGE_VERSION (about 14 minutes on 2 cores)"
  cargo install garage --version "$GARAGE_VERSION" --locked --root "$GARAGE_ROOT" --quiet
fi

# The Helm chart tests render with a real Helm engine: helm-python-sdk (Helm
# v4's Go SDK as a shared library) and PyYAML, through tests/helm/render.py.
if ! python3 -c 'import helm_python, yaml' >/dev/null 2>&1; then
  log "pip install helm-python-sdk pyyaml"
  python3 -m pip install --quiet 'helm-python-sdk==0.2.2' pyyaml
fi

log "ready: $K8S_BIN, $GARAGE_ROOT/bin, etcd $(command -v etcd)"
