#!/usr/bin/env bash
# `just bench-scale`: where backup tools break. One million small files
# (generated: 10,000 directories of 100 files of 0-2 KiB), backed up,
# backed up again unchanged and restored by kubestow and by restic, side by
# side in one run on the same disk, with each phase's wall time and peak RSS.
# Not run by CI; about 10 minutes on 2 cores (2026-12-04, files already
# generated; generating them adds a few minutes once), and about 10 GB of disk
# (each copy of the tree takes ~4 GB in 4 KiB blocks; restores are checked
# and deleted one at a time). kubestow runs with the default STOW_CHANNELS
# (1) unless BENCH_CHANNELS says otherwise. Prints a table and rewrites the
# scale section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KUBESTOW_CACHE:-$HOME/.cache/kubestow}"
FILES="${SCALE_FILES:-1000000}"
DATA="$CACHE/bench-scale-$FILES"
WORK=$(mktemp -d /var/tmp/kubestow-scale.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PW="bench-password"
CHANNELS="${BENCH_CHANNELS:-1}"

free_kib=$(df -Pk /var/tmp | awk 'NR == 2 { print $4 }')
need_kib=$((FILES * 10 + 4 * 1024 * 1024))
[ "$free_kib" -gt "$need_kib" ] || { echo "[scale] needs ~$((need_kib >> 20)) GiB free in /var/tmp, has $((free_kib >> 20))" >&2; exit 1; }

if [ ! -f "$DATA.complete" ]; then
  echo "[scale] generating $FILES files in $DATA" >&2
  rm -rf "$DATA"
  python3 - "$DATA" "$FILES" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261202)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
dirs = max(n // 100, 1)
for d in range(dirs):
    p = f"{root}/d{d // 100:03d}/d{d % 100:02d}"
    os.makedirs(p, exist_ok=True)
    for f in range(n // dirs):
        size = rng.randint(0, 2048)
        body = (b" ".join(rng.choices(words, k=size // 4 + 1)))[:size] if f % 4 else rng.randbytes(size)
        with open(f"{p}/f{f:03d}", "wb") as out:
            out.write(body)
PY
  touch "$DATA.complete"
fi
TAG=scale
source bench/lib.sh

# The restored tree has the source's files with the same sizes and bytes:
# a sorted listing of path, size and content hash of each side.
listing() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha1sum) | sha1sum | cut -d' ' -f1; }
want=$(listing "$DATA")

backup_pair "$DATA"
[ "$(listing "$WORK/out")" = "$want" ] || { echo "[scale] kubestow's restore differs from the source" >&2; exit 1; }
rm -rf "$WORK/out"
settle
measure restic.restore bash -c 'restic_ restore latest --target "$WORK/out"'
rm -rf "$WORK/out"
for t in kubestow restic; do echo "$t.repo 0 $(du -sb "$WORK/repo-$t" | cut -f1)" >>"$WORK/results"; done

python3 bench/report_scale.py "$WORK/results" "$FILES" "$CHANNELS" "$(restic version | head -n1)"
