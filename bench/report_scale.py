#!/usr/bin/env python3
"""Turns bench/scale.sh's measurements into a table and the scale section of
BENCHMARKS.md: per phase, each tool's seconds and peak RSS, and restic's
time divided by kubestow's (above 1: kubestow is faster)."""
import datetime
import os
import sys

import section

results_path, files, channels, restic_v = sys.argv[1:5]
r = {}
for line in open(results_path):
    name, secs, val = line.split()
    r[name] = (float(secs), int(val))

phases = [("backup", "first backup"), ("rebackup", "unchanged re-backup"), ("restore", "restore")]
rows = ["| phase | kubestow s | restic s | restic ÷ kubestow | kubestow peak RSS MiB | restic peak RSS MiB |",
        "|---|---|---|---|---|---|"]
for p, label in phases:
    k, t = r[f"kubestow.{p}"], r[f"restic.{p}"]
    rows.append(f"| {label} | {k[0]:.1f} | {t[0]:.1f} | {t[0] / max(k[0], 0.01):.2f}x | {k[1] / 1024:.0f} | {t[1] / 1024:.0f} |")
rows.append(f"| repository MiB | {r['kubestow.repo'][1] / (1 << 20):.0f} | {r['restic.repo'][1] / (1 << 20):.0f} | | | |")

body = "\n".join([
    f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `just bench-scale` on this machine ({os.cpu_count()} cores).",
    f"Dataset: {int(files):,} generated files of 0-2 KiB in {max(int(files) // 100, 1):,} directories (`bench/scale.sh`).",
    f"kubestow with `STOW_CHANNELS={channels}`, {restic_v}; fresh repositories on the same local disk, page cache warm.",
    "",
    "\n".join(rows),
])
print(body)

section.replace("scale-bench", body)
