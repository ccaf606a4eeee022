"""Issue 19's figures in one command: training throughput, achieved FLOP/s beside the
same run's matmul peak, and the time of the test set's importance-sampled log-likelihood.

    python benchmarks/gpu_first.py [--device auto|cpu|cuda] [--raw data/raw] [--steps 300]
        [--ll-images 10000] [--iw-samples 5000] [--out benchmarks/gpu_first.json]

For the seeds' recipe (results preset moe_seed) and the conv-manager IMSAT recipe
(moe_imsat), each on real MNIST with the data on the device as the train stage keeps it:
  images/s   train_epoch (the train stage's step loop) over --steps batches of
             train.batch_size, after a warm-up epoch of 20 steps; it reads the device
             once at its end, so the time includes all the queued work. Once for each
             train.compile mode in --compile, side by side; the warm-up's time (with the
             compile) is reported apart
  repeats    the eager loop twice from one seed, with train.deterministic off and on:
             whether the two runs' losses are equal bit for bit, and the images/s
  FLOP/s     the FLOPs of one training step, counted by torch's FlopCounterMode (forward
             and backward, every matmul and convolution; elementwise work not counted),
             times steps / time, beside a square fp32 matmul's FLOP/s measured in this run
             (moe_step.py's: 8192 on a GPU, 1024 on a CPU)
  log p(x)   evaluate's estimator (pipeline/evaluation/likelihood.py) on the first
             --ll-images test images with --iw-samples samples each; with fewer than the
             10 000 test images the full-set time is extrapolated linearly and says so.
Defaults are the GPU run's (about 3 minutes on one H200 is the aim); on a CPU pass e.g.
--steps 30 --ll-images 200. Figures go to --out as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.data.idx import load_raw_split  # noqa: E402
from pipeline.evaluation.config import EvaluateConfig  # noqa: E402
from pipeline.evaluation.likelihood import log_likelihoods  # noqa: E402
from pipeline.evaluation.metrics import prepare_test  # noqa: E402
from pipeline.models.registry import build_model  # noqa: E402
from pipeline.experiments.presets import load_preset  # noqa: E402
from pipeline.experiments.runs import run_params  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.params.train import COMPILE_MODES  # noqa: E402
from pipeline.training.loop import (compiled, cpu_model, make_optimizer, set_deterministic,  # noqa: E402
                                    train_epoch)

sys.path.insert(0, str(ROOT / "benchmarks"))
from moe_step import matmul_peak_gflops  # noqa: E402  (fp32, TF32 off, waits for the GPU)

RECIPES = {"moe_seed": "the seeds' recipe", "moe_imsat": "the conv-manager IMSAT recipe"}
TEST_IMAGES = 10_000


def step_flops(model, x: torch.Tensor) -> int:
    """FLOPs of one training step (loss forward and backward) on the batch x."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def train_speed(params, pixels: torch.Tensor, steps: int, device: torch.device, mode: str) -> dict:
    """The train stage's step loop with train.compile = mode; the warm-up epoch's time
    (20 steps, the compile included) is reported apart."""
    torch.manual_seed(0)
    model = build_model(params.model).to(device)
    opt = make_optimizer(model, params.train.lr)
    batch = params.train.batch_size
    flops = step_flops(model, model.prepare(pixels[:batch].float().div(255)).to(device))
    step = compiled(model, mode)
    t = time.perf_counter()
    train_epoch(step, model, opt, pixels, batch, 20, 0, 0, device=device)  # warm-up
    warm_up = time.perf_counter() - t
    t = time.perf_counter()
    train_epoch(step, model, opt, pixels, batch, steps, 1, 0, device=device)
    seconds = time.perf_counter() - t
    return {"compile": mode, "warm_up_s": warm_up, "images_per_s": steps * batch / seconds,
            "step_ms": 1e3 * seconds / steps, "flops_per_step": flops,
            "achieved_flops_per_s": flops * steps / seconds}


def repeatability(params, pixels: torch.Tensor, steps: int, device: torch.device,
                  deterministic: bool) -> dict:
    """train.deterministic's promise and cost: the step loop twice from the same seed,
    eager; identical when every loss part of the two runs is equal bit for bit."""
    set_deterministic(deterministic)
    try:
        runs, seconds = [], []
        for _ in range(2):
            torch.manual_seed(0)
            model = build_model(params.model).to(device)
            opt = make_optimizer(model, params.train.lr)
            t = time.perf_counter()
            runs.append(train_epoch(model, model, opt, pixels, params.train.batch_size, steps, 0, 0,
                                    device=device))
            seconds.append(time.perf_counter() - t)
    finally:
        set_deterministic(False)
    return {"deterministic": deterministic, "identical": runs[0] == runs[1],
            "images_per_s": steps * params.train.batch_size / min(seconds)}


def ll_time(params, test: torch.Tensor, images: int, samples: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(params.model).eval()
    x = prepare_test(model, test[:images], 0)
    cfg = EvaluateConfig(iw_samples=samples, iw_chunk=min(samples, 500),
                         use_gpu=device.type == "cuda")
    t = time.perf_counter()
    ll = log_likelihoods(model, x, cfg, log=lambda s: None)
    seconds = time.perf_counter() - t
    return {"images": images, "iw_samples": samples, "seconds": seconds,
            "full_test_set_seconds": seconds * TEST_IMAGES / images,
            "extrapolated": images < TEST_IMAGES, "mean_nats": float(ll.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--raw", default=str(ROOT / "data/raw"), help="the four MNIST .gz files")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ll-images", type=int, default=TEST_IMAGES)
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--compile", nargs="+", default=None, choices=COMPILE_MODES,
                   help="train.compile modes to time side by side (default: off default "
                        "reduce-overhead on a GPU, off default on a CPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/gpu_first.json"))
    a = p.parse_args()
    # cuBLAS reads its workspace setting once, at its first call: set for every row alike
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if a.device == "auto" else a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    train_pixels = torch.from_numpy(load_raw_split(Path(a.raw), "train", 60_000)[0].copy()).to(device)
    test = load_raw_split(Path(a.raw), "test", TEST_IMAGES)[0]
    params = load_params(ROOT / "params.yaml")
    peak = matmul_peak_gflops(device) * 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    report = {"device": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "matmul_peak_flops_per_s": peak, "recipes": {}}
    print(f"{name}: fp32 matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    modes = a.compile or (["off", "default", "reduce-overhead"] if device.type == "cuda" else ["off", "default"])
    for preset, what in RECIPES.items():
        run = run_params(params, load_preset(preset, ROOT / "params"), 0)
        speeds = [train_speed(run, train_pixels, a.steps, device, mode) for mode in modes]
        for speed in speeds:
            speed["peak_share"] = speed["achieved_flops_per_s"] / peak
            print(f"{preset} ({what}), compile {speed['compile']}: {speed['images_per_s']:.0f} images/s, "
                  f"{speed['step_ms']:.2f} ms a step, {speed['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = "
                  f"{100 * speed['peak_share']:.2f} % of the matmul peak (warm-up {speed['warm_up_s']:.1f}s)",
                  flush=True)
        best = max(speeds, key=lambda r: r["images_per_s"])
        repeats = [repeatability(run, train_pixels, a.steps, device, d) for d in (False, True)]
        for r in repeats:
            print(f"{preset}, train.deterministic {str(r['deterministic']).lower()}: two runs "
                  f"{'identical' if r['identical'] else 'differ'}, {r['images_per_s']:.0f} images/s", flush=True)
        ll = ll_time(run, test, min(a.ll_images, TEST_IMAGES), a.iw_samples, device)
        report["recipes"][preset] = {"what": what, "batch": run.train.batch_size, "best": best["compile"],
                                     "by_compile": speeds, "repeatability": repeats,
                                     "log_likelihood": ll}
        print(f"{preset}: fastest with compile {best['compile']} ({best['images_per_s']:.0f} images/s); "
              f"log p(x) of {ll['images']} images x {ll['iw_samples']} samples {ll['seconds']:.1f}s "
              f"(full test set {'~' if ll['extrapolated'] else ''}{ll['full_test_set_seconds']:.0f}s)", flush=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
