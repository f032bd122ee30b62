#!/usr/bin/env python3
"""Generates the benchmark dataset: mixed files, at least 1 GiB (or SCALE
times that, with every part and file count scaled; bench/size.sh uses 10).

Deterministic (seeded), so every run and every tool sees the same bytes:
  text/       ~300 MiB of word-salad text in files of 4 KiB - 8 MiB (compresses well)
  random/     ~400 MiB of incompressible data in files of 1 KiB - 64 MiB
  dup/        ~200 MiB: byte-identical copies of files from random/ and text/ (dedups)
  small/      20,000 files of 1 - 16 KiB (~160 MiB; per-file overhead)
"""
import os
import random
import shutil
import sys

MIB = 1 << 20


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main(root, scale=1):
    marker = root.rstrip("/") + ".complete"  # outside the tree, so no tool backs it up
    if os.path.exists(marker):
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(20261122)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(5000)]

    total = 0
    i = 0
    while total < 300 * MIB * scale:
        size = min(int(rng.lognormvariate(12.5, 1.6)), 8 * MIB) + 4096
        out = bytearray()
        while len(out) < size:
            out += b" ".join(rng.choices(words, k=200)) + b"\n"
        write(f"{root}/text/d{i % 37}/t{i}.txt", bytes(out[:size]))
        total += size
        i += 1

    total = 0
    i = 0
    # The first three files are large; the rest follow the distribution.
    sizes = [64 * MIB, 32 * MIB, 16 * MIB]
    while total < 400 * MIB * scale:
        size = (sizes[i] if i < len(sizes) else 0) or min(int(rng.lognormvariate(13, 2)), 16 * MIB) + 1024
        write(f"{root}/random/d{i % 11}/r{i}.bin", os.urandom(size))
        total += size
        i += 1

    total = 0
    i = 0
    sources = sorted(
        os.path.join(d, f) for sub in ("random", "text") for d, _, fs in os.walk(f"{root}/{sub}") for f in fs
    )
    while total < 200 * MIB * scale:
        src = rng.choice(sources)
        dst = f"{root}/dup/c{i}/{os.path.basename(src)}"
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
        total += os.path.getsize(dst)
        i += 1

    for i in range(20000 * scale):
        write(f"{root}/small/s{i % 100}/f{i}.dat", os.urandom(rng.randint(1024, 16384)))

    open(marker, "w").close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
