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
trap 'drop_targets 2>/dev/null || true; rm -rf "$WORK"' EXIT
PW="bench-password"
CHANNELS="${BENCH_CHANNELS:-4}"

echo "[bench] dataset $DATA" >&2
python3 bench/dataset.py "$DATA"
TAG=bench
source bench/lib.sh
rustic_() { env RUSTIC_CACHE_DIR="$WORK/rustic-cache" "$RUSTIC" -r "$WORK/repo-rustic" --password "$PW" --no-progress "$@"; }
export -f rustic_
export RUSTIC

# One dataset: each tool backs it up, backs it up again unchanged and
# restores it, into fresh repositories; the results go to $WORK/results.$2.
bench_one() { # data label
  local data=$1 label=$2
  rm -rf "$WORK/repo-"* "$WORK/restic-cache" "$WORK/rustic-cache"
  settle
  warm "$data"
  : >"$WORK/results"
  restic_ init --quiet >/dev/null
  rustic_ init >/dev/null 2>&1
  for round in backup rebackup; do
    measure "kubestow.$round" bash -c 'kubestow STOW_MODE=volume-backup STOW_VOLUME_PATH="'"$data"'"'
    measure "kubestow1.$round" bash -c 'kubestow1 STOW_MODE=volume-backup STOW_VOLUME_PATH="'"$data"'"'
    measure "restic.$round" bash -c 'restic_ backup --quiet "'"$data"'"'
    measure "rustic.$round" bash -c 'rustic_ backup "'"$data"'"'
  done
  # Each restore goes once measured into a directory of its own, on a
  # filesystem of its own where loop mounts work (see restore_target);
  # nothing is deleted until all four are done (see settle).
  local size=$(( $(du -sb "$data" | cut -f1) * 2 + (1 << 30) ))
  for t in kubestow kubestow1 restic rustic; do restore_target "$t" "$size"; done
  measure kubestow.restore bash -c 'kubestow STOW_MODE=volume-restore STOW_VOLUME_PATH="$WORK/fs-kubestow/out"'
  measure kubestow1.restore bash -c 'kubestow1 STOW_MODE=volume-restore STOW_VOLUME_PATH="$WORK/fs-kubestow1/out"'
  measure restic.restore bash -c 'restic_ restore latest --target "$WORK/fs-restic/out"'
  measure rustic.restore bash -c 'rustic_ restore latest "$WORK/fs-rustic/out"'
  for t in kubestow kubestow1; do
    echo "[bench] verifying $t's restore of $label" >&2
    diff -r --no-dereference "$data" "$WORK/fs-$t/out" >/dev/null || { echo "[bench] $t restore of $label differs from the source" >&2; exit 1; }
  done
  for t in kubestow kubestow1 restic rustic; do echo "$t.repo 0 $(du -sb "$WORK/repo-$t" | cut -f1)" >>"$WORK/results"; done
  cp "$WORK/results" "$WORK/results.$label"
  drop_targets
  rm -rf "$WORK/repo-"*
}

# Restore targets. A restore onto this disk after large deletions measures
# the disk's inode allocator more than the tool (see settle in lib.sh: all
# four restores of /usr/share took 22-29 s in one run, 9-27 s in another).
# So, where loop mounts work (root), each restore gets a fresh ext4 of its
# own, as a restore onto a new volume would; elsewhere a plain directory.
# BENCH_RESTORE_FS=dir forces the plain directories.
restore_target() { # tool size
  local dir="$WORK/fs-$1"
  mkdir -p "$dir" || return
  [ "$RESTORE_FS" = loop ] || return 0
  # Inode tables and journal are written now, not by a kernel thread
  # during the measured restores.
  truncate -s "$2" "$dir.img" \
    && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$dir.img" \
    && mount -o loop "$dir.img" "$dir"
}
drop_targets() {
  for dir in "$WORK"/fs-*; do
    [ -d "$dir" ] || continue
    if mountpoint -q "$dir"; then umount "$dir"; fi
    rm -rf "$dir" "$dir.img"
  done
}
RESTORE_FS="${BENCH_RESTORE_FS:-loop}"
# One small target made and dropped tells whether loop mounts work here.
if [ "$RESTORE_FS" = loop ] && ! restore_target probe $((64 << 20)) >/dev/null 2>&1; then
  echo "[bench] loop mounts do not work here: restores go to plain directories" >&2
  RESTORE_FS=dir
fi
drop_targets
export RESTORE_FS

# The generated dataset, then real trees nobody here wrote (BENCH_REAL_TREES,
# space-separated; by default this machine's crate sources and
# /usr/share: many small Rust sources, and a mix of documentation, locales,
# icons and data files with symlinks).
REAL="${BENCH_REAL_TREES-$HOME/.cargo/registry/src /usr/share}"
# report.py takes (results, dataset) pairs, the generated dataset first.
bench_one "$DATA" generated
args=("$WORK/results.generated" "$DATA")
for tree in $REAL; do
  [ -d "$tree" ] || continue
  label=$(basename "$tree")
  bench_one "$tree" "$label"
  args+=("$WORK/results.$label" "$tree")
done
python3 bench/report.py "$CHANNELS" "$(restic version | head -n1)" "$("$RUSTIC" --version)" "${args[@]}"
