#!/usr/bin/env bash
# `just bench-size`: does memory grow with the amount of data? The `just
# bench` dataset (1 GiB: text, incompressible files, duplicates, 20k small
# files) and the same mix at ten times the size (every part and file count
# scaled), each backed up, backed up again unchanged and restored by
# kubestow (default STOW_CHANNELS, 1, unless BENCH_CHANNELS says otherwise)
# and by restic, side by side, with wall time and peak RSS. Not run by CI;
# about 15-25 minutes on 2 cores, and about 40 GB of disk at the peak (the
# 11 GiB of data is kept under ~/.cache/kubestow). Prints a table and
# rewrites the size section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
WORK=$(mktemp -d /var/tmp/kubestow-size.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PW="bench-password"
CHANNELS="${BENCH_CHANNELS:-1}"
SCALES="${SIZE_SCALES:-1 10}"

free_kib=$(df -Pk /var/tmp | awk 'NR == 2 { print $4 }')
[ "$free_kib" -gt $((40 << 20)) ] || { echo "[size] needs ~40 GiB free in /var/tmp, has $((free_kib >> 20))" >&2; exit 1; }

TAG=size
source bench/lib.sh
: >"$WORK/all"
for scale in $SCALES; do
  # Scale 1 is the `just bench` dataset itself.
  if [ "$scale" = 1 ]; then data="$CACHE/bench-data-v1"; else data="$CACHE/bench-data-x$scale"; fi
  echo "[size] dataset $data" >&2
  python3 bench/dataset.py "$data" "$scale"
  rm -rf "$WORK/repo-"* "$WORK/out" "$WORK/restic-cache"
  backup_pair "$data"
  echo "[size] verifying kubestow's restore" >&2
  diff -r --no-dereference "$data" "$WORK/out" >/dev/null || { echo "[size] kubestow's restore differs from the source" >&2; exit 1; }
  rm -rf "$WORK/out"
  settle
  measure restic.restore bash -c 'restic_ restore latest --target "$WORK/out"'
  rm -rf "$WORK/out"
  bytes=$(du -sb "$data" | cut -f1)
  files=$(find "$data" -type f | wc -l)
  sed "s/^/$scale $bytes $files /" "$WORK/results" >>"$WORK/all"
done

python3 bench/report_size.py "$WORK/all" "$CHANNELS" "$(restic version | head -n1)"
