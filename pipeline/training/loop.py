"""The training step shared by the train stage and every sweep trial: one epoch over
uint8 pixels on the training device, the optimizer, the per-epoch checkpoint and the snapshot
of every component. No Ray here (worker.py and the sweep call it)."""
from __future__ import annotations

import copy
import os
import platform
import re
from pathlib import Path
from typing import Dict, List, Optional

import torch

from pipeline.core.distributed import any_rank, first_message, mean_over_ranks
from pipeline.core.errors import TrainError
from pipeline.evaluation.likelihood import iw_log_likelihood
from pipeline.models.base import GenerativeModel
from pipeline.models.checkpoint import model_state

STATE_FILE = "state.pt"


class NonFiniteLossError(TrainError):
    """Raised on every rank at once when any rank sees a NaN/inf loss. Not transient:
    retrying from the same checkpoint gives the same loss, so nothing retries it."""


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Reseeding per (epoch, rank) makes a run resumed from an epoch checkpoint take the
    # same batches and noise as an uninterrupted one.
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2 ** 63)


# Steps between two checks for a non-finite loss: each check is one host sync (and, under
# DDP, one tiny all-reduce); in between, the step loop only queues device work.
CHECK_EVERY = 50


def train_epoch(model: torch.nn.Module, raw: GenerativeModel, opt: torch.optim.Optimizer,
                pixels: torch.Tensor, batch: int, steps: int, epoch: int, seed: int,
                rank: int = 0, device: torch.device = torch.device("cpu"),
                world: int = 1, side: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """One pass of `steps` global batches of `batch` x `world` rows drawn without
    replacement from the (N, 784) uint8 `pixels`: the whole training split, on the training
    device, where batches are drawn, sliced and binarized. Every rank draws the same
    permutation and binarization noise and steps on its `batch` rows of each global batch
    (torch's DistributedSampler contract), so `world` DDP ranks see exactly the images one
    process sees at the same global batch. `side` (N, ...), the kind's side_input on the
    same device, gives forward each batch's rows of it. `model` may be the DDP wrapper of
    `raw`. Returns the mean of every loss part over steps (and over ranks under DDP), read
    from the device once.

    A non-finite loss is caught within CHECK_EVERY steps and reported with the epoch and
    step where it first appeared (the steps after it only waste a little time: the run
    stops either way, and its last checkpoint is from before this epoch)."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))  # the same on every rank
    torch.manual_seed(epoch_seed(seed, epoch, rank))  # reparameterisation noise: each rank its own
    order = torch.randperm(pixels.shape[0], generator=gen).to(pixels.device)
    # Binarization noise: on the CPU from `gen`, after the permutation (the numbers of
    # every earlier version); on a GPU from a generator of its own there.
    noise = gen if pixels.device.type == "cpu" else \
        torch.Generator(pixels.device).manual_seed(epoch_seed(seed, epoch, 0))
    whole, mine = batch * world, slice(rank * batch, (rank + 1) * batch)
    sums: Dict[str, torch.Tensor] = {}  # float64 on the device: the same sums as Python floats
    first_bad = torch.full((), steps, device=device)  # the first non-finite step; steps: none
    bad_loss = torch.zeros((), device=device)
    raw.set_epoch(epoch)
    model.train()
    for step in range(steps):
        idx = order[step * whole:(step + 1) * whole]  # (batch x world,) the global batch
        x = raw.prepare(pixels[idx].float().div_(255), generator=noise)[mine].to(device)
        parts = model(x) if side is None else model(x, side[idx[mine]])
        loss = parts["loss"]
        new = ~torch.isfinite(loss.detach()) & (first_bad == steps)
        first_bad = torch.where(new, step, first_bad)
        bad_loss = torch.where(new, loss.detach(), bad_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in parts.items():
            sums[k] = sums[k] + v.detach().double() if k in sums else v.detach().double()
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
            stop_if_non_finite(int(first_bad), float(bad_loss), steps, epoch)
    keys = sorted(sums)
    values = torch.stack([sums[k] for k in keys]).tolist() if keys else []  # one sync an epoch
    return mean_over_ranks(dict(zip(keys, values)), steps)


@torch.no_grad()
def held_out_nll(model: GenerativeModel, x: torch.Tensor, samples: int, seed: int,
                 batch: int = 500) -> float:
    """train.holdout's score: -mean log p(x) over the prepared held-out images `x` (N, D),
    by `samples` importance samples (1: the negative ELBO), from the same noise every epoch
    (the training RNG is reseeded at each epoch's start, so this draw changes no training)."""
    model.eval()
    torch.manual_seed(seed)
    total = sum(float(iw_log_likelihood(model, xb, samples, min(samples, 500)).sum())
                for xb in x.split(batch))
    model.train()
    return -total / len(x)


def kept_state(model: GenerativeModel) -> dict:
    """model_state with tensors of its own, to keep while training goes on (early stopping's
    best epoch): on a CPU, model_state's tensors share the live weights' storage."""
    return copy.deepcopy(model_state(model))


def best_epoch(history: List[Dict[str, float]]) -> int:
    """The epoch (1-based) of the lowest held_out_nll in `history`, the first of ties."""
    scores = [row["held_out_nll"] for row in history]
    return scores.index(min(scores)) + 1


def out_of_patience(history: List[Dict[str, float]], patience: int) -> bool:
    """train.early_stopping: `patience` epochs have passed without a better held_out_nll."""
    return bool(patience and history) and len(history) - best_epoch(history) >= patience


def stop_if_non_finite(first_bad: int, loss: float, steps: int, epoch: int) -> None:
    """Raise NonFiniteLossError on every rank if any rank has seen a non-finite loss."""
    if not any_rank(first_bad < steps):
        return
    mine = (f"non-finite loss ({loss}) at epoch {epoch + 1}, step {first_bad + 1}; lower "
            f"train.lr or check the data") if first_bad < steps else ""
    raise NonFiniteLossError(first_message(mine))


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in
             (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if ln.startswith("model name")]
    return names[0] if names else platform.processor() or "CPU"


def describe_hardware(device: torch.device, world: int, threads: int) -> str:
    """What trained, for the results table: e.g. '1 worker x AMD EPYC 7B13 (2 threads)'."""
    what = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_model()} ({threads} threads)")
    return f"{world} worker{'s' if world > 1 else ''} x {what}"


# The settings that decide a CPU run's floating-point results besides params and seed.
PORTABLE_CPU_ENV = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2",
                    "ONEDNN_MAX_CPU_ISA": "AVX2"}


def describe_environment(device: torch.device, threads: int) -> Dict[str, str]:
    """What repeating a run needs besides its params and seed (the run record): the same
    values here give the same numbers on a CPU (see docs/pipeline.md, Reproducibility)."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "blas": f"{blas.group(1) if blas else '?'}{' ' + mkl.group(1) if mkl else ''}",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(threads),
        "python": platform.python_version(),
    }
    env.update({k: os.environ[k] for k in PORTABLE_CPU_ENV if k in os.environ})
    if device.type == "cuda":
        env["cuda"] = str(torch.version.cuda)
    return env


def set_deterministic(on: bool) -> None:
    """train.deterministic: deterministic kernels, so a GPU run repeats bit for bit (an op
    without such a kernel raises, naming itself). Call before the process's first CUDA
    matmul: cuBLAS reads CUBLAS_WORKSPACE_CONFIG once. CPU kernels are deterministic already.
    False restores torch's defaults (the workspace setting stays: it costs nothing)."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = on, False


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """train.compile: what the step loop calls. torch.compile traces forward and backward
    into fused kernels (reduce-overhead: also replayed as CUDA graphs); a DDP wrapper is
    compiled with its gradient buckets as graph breaks. The first steps pay the compile.
    Random ops draw from torch's generator as in eager mode (inductor's fallback_random):
    compiling changes the kernels, not the noise, so a compiled run is the same draw."""
    if mode == "off":
        return model
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    return torch.compile(model, mode=mode)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel: one pass over every parameter instead of a Python loop
    of per-tensor ops (about 2 ms instead of 15 ms a step for the default MoE-VAE on CPU)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group's lr (train.lr_schedule's value for the coming epoch)."""
    for group in opt.param_groups:
        group["lr"] = lr


def save_state(directory: str, model: GenerativeModel, opt: torch.optim.Optimizer, epoch: int,
               **extra) -> None:
    """The checkpoint both the train stage and every sweep trial write after an epoch."""
    torch.save({"model": model_state(model), "optimizer": opt.state_dict(), "epoch": epoch,
                **extra}, Path(directory) / STATE_FILE)


def load_state(checkpoint, model: GenerativeModel, opt: torch.optim.Optimizer,
               device: torch.device) -> dict:
    """Restore model and optimizer from a Ray checkpoint written by save_state."""
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state["model"]["state_dict"])
    opt.load_state_dict(state["optimizer"])
    return state


@torch.no_grad()
def component_snapshot(model: GenerativeModel, seed: int) -> torch.Tensor:
    """(C, D) uint8: one sample per component from the same noise every epoch, so a grid
    of snapshots shows each expert (or prior mode) settle on its digit. The training
    RNG is reseeded at the start of every epoch, so this draw does not change training."""
    torch.manual_seed(seed)
    model.eval()
    images = model.sample_components(1)[:, 0]
    model.train()
    return images.mul(255).round().to(torch.uint8).cpu()
