#!/usr/bin/env bash
# `just bench`: kubestow's repository writer against restic and rustic, side by
# side in one run, on the same generated dataset, disk and page cache.
# Prints a table and rewrites the results section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
RUSTIC=$(bash bench/setup.sh | tail -n1)
DATA="$CACHE/bench-data-v1"
WORK=$(mktemp -d /var/tmp/kubestow-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PW="bench-password"
CHANNELS="${BENCH_CHANNELS:-4}"

echo "[bench] dataset $DATA" >&2
python3 bench/dataset.py "$DATA"
echo "[bench] building kubestow (release)" >&2
cargo build --release --quiet
KUBESTOW="${CARGO_TARGET_DIR:-$PWD/target}/release/kubestow"

# measure NAME command...: wall seconds and peak RSS (KiB) into $WORK/results.
measure() {
  local name=$1; shift
  echo "[bench] $name" >&2
  if ! /usr/bin/time -f "%e %M" -o "$WORK/time.$name" "$@" >"$WORK/log.$name" 2>&1; then
    echo "[bench] $name failed:" >&2; tail -20 "$WORK/log.$name" >&2; exit 1
  fi
  echo "$name $(tail -n1 "$WORK/time.$name")" >>"$WORK/results"
}
kubestow() {
  env -i PATH="$PATH" STOW_PASSWORD="$PW" STOW_REPOSITORY="file://$WORK/repo-kubestow" \
    STOW_CHANNELS="$CHANNELS" STOW_INIT=true STOW_VOLUME_NAME=bench RUST_LOG=warn "$@" "$KUBESTOW"
}
restic_() { env RESTIC_PASSWORD="$PW" RESTIC_CACHE_DIR="$WORK/restic-cache" restic -r "$WORK/repo-restic" "$@"; }
rustic_() { env RUSTIC_CACHE_DIR="$WORK/rustic-cache" "$RUSTIC" -r "$WORK/repo-rustic" --password "$PW" --no-progress "$@"; }
export -f kubestow restic_ rustic_
export PW WORK KUBESTOW RUSTIC CHANNELS

: >"$WORK/results"
restic_ init --quiet >/dev/null
rustic_ init >/dev/null 2>&1
for round in backup rebackup; do
  measure "kubestow.$round" bash -c 'kubestow STOW_MODE=volume-backup STOW_VOLUME_PATH="'"$DATA"'"'
  measure "restic.$round" bash -c 'restic_ backup --quiet "'"$DATA"'"'
  measure "rustic.$round" bash -c 'rustic_ backup "'"$DATA"'"'
done
measure kubestow.restore bash -c 'kubestow STOW_MODE=volume-restore STOW_VOLUME_PATH="$WORK/out-kubestow"'
measure restic.restore bash -c 'restic_ restore latest --target "$WORK/out-restic"'
measure rustic.restore bash -c 'rustic_ restore latest "$WORK/out-rustic"'

echo "[bench] verifying kubestow's restore" >&2
diff -r "$DATA" "$WORK/out-kubestow" >/dev/null || { echo "[bench] kubestow restore differs from the source" >&2; exit 1; }
for t in kubestow restic rustic; do echo "$t.repo 0 $(du -sb "$WORK/repo-$t" | cut -f1)" >>"$WORK/results"; done

python3 bench/report.py "$WORK/results" "$DATA" "$CHANNELS" "$(restic version | head -n1)" "$("$RUSTIC" --version)"
