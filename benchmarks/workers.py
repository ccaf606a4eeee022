"""Training throughput of the real train stage (Ray Train, DDP) with 1 and 2 workers.

    python benchmarks/workers.py [--raw data/raw] [--rows 12000] [--epochs 2] [--preset NAME]

Prepares `--rows` MNIST training images as shards in a temporary folder, then runs
pipeline.training.driver.fit with train.num_workers = 1 and 2 on the same data and params (the
default MoE-VAE, or params/NAME.yaml with --preset) and prints images/s of the last epoch.
On a CPU machine the workers split the cores; with a GPU per worker (train.use_gpu auto)
they use NCCL, so the same command gives the GPU figure.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pipeline.data.shards import write_shards
from pipeline.experiments.presets import load_preset
from pipeline.experiments.runs import run_params
from pipeline.params import load_params, with_overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", default="data/raw", help="the four MNIST IDX .gz files")
    p.add_argument("--rows", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--preset", help="a recipe from params/ (e.g. moe_imsat)")
    args = p.parse_args()

    from pipeline.training.driver import fit

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_shards(shards, Path(args.raw), 2, args.rows)
        for workers in (1, 2):
            params = load_params(args.params)
            if args.preset:
                params = run_params(params, load_preset(args.preset), params.train.seed)
            params = with_overrides(params, {
                "train.num_workers": workers, "train.epochs": args.epochs,
                "train.storage_path": str(Path(tmp) / "ray"), "data.shards": 2})
            state = fit(params, shards, log=lambda m: None)
            last = state["timings"][-1]
            rows[workers] = (last["images_per_s"], state["hardware"])
            print(f"{workers} worker(s): {last['images_per_s']:7.0f} images/s  ({state['hardware']})",
                  flush=True)
    print(f"2 workers / 1 worker: {rows[2][0] / rows[1][0]:.2f}x")


if __name__ == "__main__":
    main()
