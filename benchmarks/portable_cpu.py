"""What train.portable_cpu costs, and what it buys, on this CPU.

    python benchmarks/portable_cpu.py [--raw data/raw] [--steps 200] [--threads 2] [--repeats 2]

Trains the main recipe (params.yaml) for `--steps` batches of MNIST in fresh processes,
interleaved, under three kernel settings (they are read when torch loads, hence processes):
- `default`: torch and MKL pick the fastest kernels for this CPU (AVX-512 where it has it);
- `as-avx2-cpu`: ATEN_CPU_CAPABILITY=avx2, the kernels an AVX2-only CPU would run: how a
  different machine's run of the same params and seed differs from this one's;
- `portable`: train.portable_cpu's settings (pipeline.training.loop.PORTABLE_CPU_ENV).
Prints seconds per step (median over repeats), the slowdown of `portable` against
`default`, and whether each setting's loss after the last step equals `default`'s bit for
bit. Writes the figures to --out (JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {"default": {}, "as-avx2-cpu": {"ATEN_CPU_CAPABILITY": "avx2"}, "portable": None}


def child(args: argparse.Namespace) -> None:
    import time

    import numpy as np
    import torch

    from pipeline.data.idx import load_raw_split
    from pipeline.models.registry import build_model
    from pipeline.params import load_params
    from pipeline.training.loop import make_optimizer, train_epoch

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    rows = args.steps * 100
    pixels = (load_raw_split(Path(args.raw), "train", 60000)[0][:rows]
              if (Path(args.raw) / "train-images-idx3-ubyte.gz").exists()
              else np.random.default_rng(0).integers(0, 256, (rows, 784), dtype=np.uint8))
    torch.manual_seed(params.train.seed)
    model = build_model(params.model)
    opt = make_optimizer(model, params.train.lr)
    t0 = time.perf_counter()
    parts = train_epoch(model, model, opt, torch.from_numpy(np.ascontiguousarray(pixels)), 100,
                        args.steps, 0, params.train.seed)
    print(json.dumps({"seconds_per_step": (time.perf_counter() - t0) / args.steps,
                      "loss": parts["loss"], "capability": torch.backends.cpu.get_cpu_capability()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--raw", default="data/raw")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="benchmarks/portable_cpu.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from pipeline.training.loop import PORTABLE_CPU_ENV

    SETTINGS["portable"] = PORTABLE_CPU_ENV
    runs = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):  # interleaved: drift in the machine's speed hits all alike
        for name, env in SETTINGS.items():
            clean = {k: v for k, v in os.environ.items() if k not in PORTABLE_CPU_ENV}
            out = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], check=True,
                                 capture_output=True, text=True, env={**clean, **env}).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    ref = runs["default"][0]["loss"]
    result = {}
    for name, rs in runs.items():
        sps = statistics.median(r["seconds_per_step"] for r in rs)
        result[name] = {"seconds_per_step": sps, "loss": rs[0]["loss"], "capability": rs[0]["capability"],
                        "same_loss_as_default": rs[0]["loss"] == ref,
                        "repeatable": len({r["loss"] for r in rs}) == 1}
        print(f"{name:12s} {sps * 1e3:7.2f} ms/step  ATen {rs[0]['capability']:7s} loss {rs[0]['loss']!r}"
              f"{'' if rs[0]['loss'] == ref else '  (differs from default)'}")
    result["portable_slowdown"] = result["portable"]["seconds_per_step"] / result["default"]["seconds_per_step"]
    print(f"portable / default: {result['portable_slowdown']:.2f}x time per step")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
