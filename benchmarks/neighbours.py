"""What the cached neighbours save a rerun: the side input of a run whose manager uses
IMSAT's per-image VAT radius (consistency_radius: knn), computed in the run as before
the neighbours stage existed, against read from the stage's folder. Side by side in
one process, on the same rows and threads; the radii must be bit for bit equal.

    python benchmarks/neighbours.py [--shards data/shards] [--neighbours data/neighbours]
                                    [--rows N] [--threads 2] [--repeats 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pipeline.data.load import load_split
from pipeline.data.neighbours import read_neighbours, write_neighbours
from pipeline.data.shards import write_shards
from pipeline.models.manager import knn_radius, radius_from


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", default="data/shards")
    p.add_argument("--neighbours", default="data/neighbours", help="the neighbours stage's folder")
    p.add_argument("--raw", help="with --rows: make shards of the first N images of these IDX files")
    p.add_argument("--rows", type=int, help="a quick run on fewer training images (needs --raw)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="as a 2-core run's worker")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shards, cache = Path(args.shards), Path(args.neighbours)
        if args.rows:
            shards, cache = Path(tmp) / "shards", Path(tmp) / "neighbours"
            write_shards(shards, Path(args.raw), 2, args.rows)
            write_neighbours(shards, cache, args.k)
        pixels = torch.from_numpy(load_split(shards, "train").pixels.copy())
        computed, read = [], []
        for _ in range(args.repeats):  # interleaved: both see the same machine state
            a, s = timed(lambda: knn_radius(pixels, args.k))
            computed.append(s)
            b, s = timed(lambda: radius_from(read_neighbours(cache, shards), args.k))
            read.append(s)
            assert torch.equal(a, b), "the cached radii differ from the computed ones"
    c, r = min(computed), min(read)
    print(f"{len(pixels)} images, k={args.k}, {args.threads} threads: computed in the run "
          f"{c:.2f} s, read from the cache {r * 1000:.1f} ms; a rerun saves {c - r:.1f} s "
          f"({c / r:.0f}x); radii bit for bit equal")


if __name__ == "__main__":
    main()
