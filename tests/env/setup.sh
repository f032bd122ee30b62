#!/usr/bin/env bash
# Installs and builds the real test servers (etcd, kube-apiserver,
# kube-controller-manager, Garage) idempotently. Slow artefacts are cached
# under ~/.cache/kubestow keyed by version, so a warm run takes seconds while a
# fresh machine still builds everything from registries alone.
set -euo pipefail

CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
# Version, build key and recipe of the Debian-source build (shared with
# setup-node.sh's node components): k8s-debian.sh.
# shellcheck source=tests/env/k8s-debian.sh
. "$(dirname "${BASH_SOURCE[0]}")/k8s-debian.sh"
K8S_VERSION=$K8S_DEBIAN_VERSION
K8S_BUILD=$K8S_DEBIAN_BUILD
GARAGE_VERSION=2.5.0
K8S_BIN="$CACHE/kubernetes-$K8S_BUILD/bin"
GARAGE_ROOT="$CACHE/garage-$GARAGE_VERSION"
mkdir -p "$CACHE"

log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need_pkgs=()
for pair in etcd:etcd-server go:golang-go rsync:rsync jq:jq setpriv:util-linux kubectl:kubernetes-client stunnel4:stunnel4 promtool:prometheus; do
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
  k8s_debian_build "$CACHE/build-k8s" "$K8S_BIN" kube-apiserver kube-controller-manager
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
