#!/usr/bin/env python3
"""Turns bench/size.sh's measurements into the size section of
BENCHMARKS.md: per dataset size and phase, each tool's seconds and peak
RSS, and how much the peak RSS grew from the smallest dataset."""
import datetime
import os
import sys

import section

results_path, channels, restic_v = sys.argv[1:4]
r = {}
sizes = {}
for line in open(results_path):
    scale, nbytes, files, name, secs, kib = line.split()
    r[(int(scale), name)] = (float(secs), int(kib))
    sizes[int(scale)] = (int(nbytes), int(files))
scales = sorted(sizes)

phases = [("backup", "first backup"), ("rebackup", "unchanged re-backup"), ("restore", "restore")]
rows = ["| data | phase | kubestow s | restic s | restic ÷ kubestow | kubestow peak RSS MiB | restic peak RSS MiB |",
        "|---|---|---|---|---|---|---|"]
for s in scales:
    nbytes, files = sizes[s]
    for p, label in phases:
        k, t = r[(s, f"kubestow.{p}")], r[(s, f"restic.{p}")]
        rows.append(f"| {nbytes / (1 << 30):.1f} GiB, {files:,} files | {label} | {k[0]:.1f} | {t[0]:.1f} | "
                    f"{t[0] / max(k[0], 0.01):.2f}x | {k[1] / 1024:.0f} | {t[1] / 1024:.0f} |")

growth = []
if len(scales) > 1:
    lo, hi = scales[0], scales[-1]
    growth = ["", f"Peak RSS at {sizes[hi][0] / (1 << 30):.1f} GiB divided by peak RSS at {sizes[lo][0] / (1 << 30):.1f} GiB:", "",
              "| phase | kubestow | restic |", "|---|---|---|"]
    for p, label in phases:
        g = [r[(hi, f"{t}.{p}")][1] / r[(lo, f"{t}.{p}")][1] for t in ("kubestow", "restic")]
        growth.append(f"| {label} | {g[0]:.2f} | {g[1]:.2f} |")

body = "\n".join([
    f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `just bench-size` on this machine ({os.cpu_count()} cores).",
    "Datasets: the `just bench` mix (`bench/dataset.py`) and the same mix at ten times the size.",
    f"kubestow with `STOW_CHANNELS={channels}`, {restic_v}; fresh repositories on the same local disk, page cache warm where the data fits.",
    "",
    "\n".join(rows),
] + growth)
print(body)
section.replace("size-bench", body)
