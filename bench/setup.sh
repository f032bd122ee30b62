#!/usr/bin/env bash
# Installs the baselines `just bench` compares against: restic (Debian) and
# rustic (crates.io, cached under ~/.cache/kubestow), plus GNU time for peak RSS.
set -euo pipefail
CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
RUSTIC_VERSION=0.11.4
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -x "$CACHE/rustic-$RUSTIC_VERSION/bin/rustic" ]; then
  echo "[bench] cargo install rustic-rs $RUSTIC_VERSION (slow the first time; cached)" >&2
  cargo install rustic-rs --version "$RUSTIC_VERSION" --locked --root "$CACHE/rustic-$RUSTIC_VERSION" --quiet
fi
echo "$CACHE/rustic-$RUSTIC_VERSION/bin/rustic"
