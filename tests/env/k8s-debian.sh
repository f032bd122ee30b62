# shellcheck shell=bash
# Sourced by setup.sh and setup-node.sh: builds commands of Kubernetes 1.20.2
# from Debian bookworm's `kubernetes` source package with Debian's Go 1.19.
# setup.sh builds kube-apiserver and kube-controller-manager with it,
# setup-node.sh (step k8s-1.20) kubelet, kube-scheduler and kube-proxy.
# The caller sets CACHE and SUDO and defines log; NICE, if set, is an array
# prefixed to make (setup-node.sh builds at nice 19).

K8S_DEBIAN_VERSION=1.20.2
# The build key changes whenever the build recipe changes, so caches rebuild.
# reflect2fix: Debian's 1.20.2 vendors reflect2 1.0.1, which crashes
# (SIGSEGV) under Go >= 1.18 on the first custom-resource write; the build
# swaps in Debian's reflect2 1.0.2.
# shellcheck disable=SC2034 # used by the callers
K8S_DEBIAN_BUILD="$K8S_DEBIAN_VERSION-reflect2fix"

# k8s_debian_build WORK BIN NAME...
# Builds cmd/NAME... in the scratch directory WORK (removed when done) and
# installs the binaries into BIN. The caller decides whether a build is needed.
k8s_debian_build() {
  local work=$1 bin=$2
  shift 2
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/kubestow-src.sources >/dev/null
    $SUDO apt-get update -qq
  fi
  # apt-get source unpacks with dpkg-source (dpkg-dev); the build runs make.
  local need=() pair
  for pair in dpkg-source:dpkg-dev make:make; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  rm -rf "$work"; mkdir -p "$work"
  (cd "$work" && apt-get source -qq kubernetes >/dev/null 2>&1 || apt-get source kubernetes)
  local src
  src=$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$src" ] || { log "apt-get source kubernetes produced no tree"; exit 1; }
  # See K8S_DEBIAN_BUILD above.
  # Kubernetes 1.20 builds in GOPATH mode, which current Go (first on PATH on
  # these machines) no longer supports; Debian's Go 1.19 builds it.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq golang-github-modern-go-reflect2-dev golang-1.19-go >/dev/null
  local reflect2_src=/usr/share/gocode/src/github.com/modern-go/reflect2
  [ -f "$reflect2_src/go_above_118.go" ] || { log "Debian's reflect2 lacks go_above_118.go; cannot fix the build"; exit 1; }
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  mkdir -p "$src/vendor/github.com/modern-go/reflect2"
  cp "$reflect2_src"/*.go "$src/vendor/github.com/modern-go/reflect2/"
  local what=("${@/#/cmd/}")
  (
    cd "$src" || exit 1
    mkdir -p .go/src/k8s.io
    ln -sfn "$src" .go/src/k8s.io/kubernetes
    cd .go/src/k8s.io/kubernetes || exit 1
    export PATH="/usr/lib/go-1.19/bin:$PATH"
    # CGO_ENABLED=0 as in debian/rules: hack/lib/golang.sh builds kubelet
    # (not in its static list) with the environment's setting.
    # hack/lib/golang.sh sets GOCACHE to _output/local/go/cache, in the
    # scratch tree: each build compiles everything.
    export GOPATH="$src/.go" CGO_ENABLED=0 GO111MODULE=off GOFLAGS=
    ${NICE[@]+"${NICE[@]}"} make WHAT="${what[*]}"
  )
  mkdir -p "$bin"
  local b f
  for b in "$@"; do
    f=$(find "$src/_output" -type f -name "$b" | head -n1)
    [ -n "$f" ] || { log "build produced no $b"; exit 1; }
    install -m 0755 "$f" "$bin/$b"
  done
  rm -rf "$work"
}
