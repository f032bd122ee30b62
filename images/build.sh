#!/usr/bin/env bash
# Builds the kubestow container image with buildah, FROM scratch, with no
# registry: the release binary, the shared libraries `ldd` lists for it (at
# their paths), the CA bundle, and /etc/passwd and /etc/group with nonroot
# 65532. See images/Containerfile. `just image` runs this; the tests use the
# same script.
#
#   images/build.sh [TAG]          TAG defaults to localhost/kubestow:dev
#
# It also writes the image as a docker-archive tar, for
# `ctr -n k8s.io images import` (containerd) or `podman load`.
#
# Environment:
#   KUBESTOW_BIN        use this kubestow binary instead of building one
#   KUBESTOW_IMAGE_TAR  where to write the tar ($CARGO_TARGET_DIR/image/kubestow-image.tar)
#   CARGO_TARGET_DIR    cargo's target directory (default: target/ in the repository)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
tag="${1:-localhost/kubestow:dev}"
target="${CARGO_TARGET_DIR:-$repo/target}"
tar_out="${KUBESTOW_IMAGE_TAR:-$target/image/kubestow-image.tar}"
log() { printf '[image] %s\n' "$*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need=()
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v ldd >/dev/null 2>&1 || need+=(libc-bin)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

bin="${KUBESTOW_BIN:-}"
if [ -z "$bin" ]; then
  log "cargo build --release --locked --bin kubestow"
  (cd "$repo" && CARGO_TARGET_DIR="$target" nice -n 19 cargo build --release --locked --bin kubestow)
  bin="$target/release/kubestow"
fi
[ -x "$bin" ] || { log "no kubestow binary at $bin"; exit 1; }

ctx="$target/image/context"
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
install -m 0755 "$bin" "$ctx/rootfs/usr/local/bin/kubestow"
# Every library the dynamic loader resolves for the binary, and the loader
# itself, copied (dereferenced) to the same path. vdso has no file.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || { log "ldd listed no libraries for $bin (a static binary needs no change here, but check)"; }
for lib in $libs; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/rootfs/etc/group"
cp "$repo/images/Containerfile" "$ctx/Containerfile"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
old_id=$(buildah images --quiet --no-trunc "$tag" 2>/dev/null | head -n1 || true)
log "buildah bud -t $tag (libraries: $(echo $libs))"
buildah bud --quiet --layers=false \
  --label "org.opencontainers.image.title=kubestow" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null

# A rebuild leaves the previous image untagged: remove it unless a container uses it.
new_id=$(buildah images --quiet --no-trunc "$tag" | head -n1)
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  buildah rmi "$old_id" >/dev/null 2>&1 || true
fi

mkdir -p "$(dirname "$tar_out")"
rm -f "$tar_out"
buildah push --quiet "$tag" "docker-archive:$tar_out:$tag"
size=$(buildah images --format '{{.Size}}' "$tag" | head -n1)
log "built $tag ($size; archive $(du -h "$tar_out" | cut -f1)): $tar_out"
echo "$tar_out"
