# Shared by bench/run.sh and bench/scale.sh (sourced): builds kubestow and
# defines how each tool is run and measured. Needs WORK, PW, CHANNELS and
# TAG set.

echo "[$TAG] building kubestow (release)" >&2
cargo build --release --quiet
KUBESTOW="${CARGO_TARGET_DIR:-$PWD/target}/release/kubestow"

# measure NAME command...: wall seconds and peak RSS (KiB) into $WORK/results.
measure() {
  local name=$1; shift
  echo "[$TAG] $name" >&2
  # The previous tool's dirty pages are written back before, not during,
  # this one's run.
  sync
  if ! /usr/bin/time -f "%e %M" -o "$WORK/time.$name" "$@" >"$WORK/log.$name" 2>&1; then
    echo "[$TAG] $name failed:" >&2; tail -20 "$WORK/log.$name" >&2; exit 1
  fi
  echo "$name $(tail -n1 "$WORK/time.$name")" >>"$WORK/results"
}
kubestow() {
  env -i PATH="$PATH" STOW_PASSWORD="$PW" STOW_REPOSITORY="file://$WORK/repo-kubestow" \
    STOW_CHANNELS="$CHANNELS" STOW_INIT=true STOW_VOLUME_NAME=bench RUST_LOG=warn "$@" "$KUBESTOW"
}
# The same with the default STOW_CHANNELS (1), into a repository of its own.
kubestow1() {
  env -i PATH="$PATH" STOW_PASSWORD="$PW" STOW_REPOSITORY="file://$WORK/repo-kubestow1" \
    STOW_INIT=true STOW_VOLUME_NAME=bench RUST_LOG=warn "$@" "$KUBESTOW"
}
restic_() { env RESTIC_PASSWORD="$PW" RESTIC_CACHE_DIR="$WORK/restic-cache" restic -r "$WORK/repo-restic" "$@"; }
export -f kubestow kubestow1 restic_
export PW WORK KUBESTOW CHANNELS

# On ext4 without a journal (this machine's disk), creating files within
# 30 s of deleting many makes the kernel skip each recently freed inode
# (find_inode_bit -> recently_deleted): perf showed 80% of a restore that
# followed an rm -rf of 20k files spent there, and the tool measured next
# paid for the one before. So a measured phase that creates files starts
# only after deletions have aged.
settle() { sync; sleep "${BENCH_SETTLE:-35}"; }

# Reads every file of a tree once, so the first tool measured does not
# pay for reading it from disk.
warm() { find "$1" -type f -print0 | xargs -0 -r cat >/dev/null; }

# kubestow and restic side by side on one tree (bench/scale.sh,
# bench/size.sh): a first backup and an unchanged re-backup each into
# fresh repositories, then kubestow's restore into $WORK/out; the caller
# checks and removes that, then measures restic's restore.
backup_pair() { # data
  : >"$WORK/results"
  settle
  warm "$1"
  restic_ init --quiet >/dev/null
  for round in backup rebackup; do
    measure "kubestow.$round" bash -c 'kubestow STOW_MODE=volume-backup STOW_VOLUME_PATH="'"$1"'"'
    measure "restic.$round" bash -c 'restic_ backup --quiet "'"$1"'"'
  done
  measure kubestow.restore bash -c 'kubestow STOW_MODE=volume-restore STOW_VOLUME_PATH="$WORK/out"'
}
