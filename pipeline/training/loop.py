"""The training step shared by the train stage and every sweep trial: one epoch over
device-agnostic uint8 pixels, the optimizer, the per-epoch checkpoint and the snapshot
of every component. No Ray here (worker.py and the sweep call it)."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Dict

import torch

from pipeline.core.distributed import any_rank, mean_over_ranks
from pipeline.core.errors import TrainError
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


def train_epoch(model: torch.nn.Module, raw: GenerativeModel, opt: torch.optim.Optimizer,
                pixels: torch.Tensor, batch: int, steps: int, epoch: int, seed: int,
                rank: int = 0, device: torch.device = torch.device("cpu")) -> Dict[str, float]:
    """One pass of `steps` batches of `batch` rows drawn without replacement from the
    (N, 784) uint8 `pixels`. `model` may be the DDP wrapper of `raw`. Returns the mean of
    every loss part over steps (and over ranks under DDP)."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch, rank))
    torch.manual_seed(epoch_seed(seed, epoch, rank))  # reparameterisation noise
    order = torch.randperm(pixels.shape[0], generator=gen)
    sums: Dict[str, float] = {}
    raw.set_epoch(epoch)
    model.train()
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        x = raw.prepare(pixels[idx].float().div_(255), generator=gen).to(device)
        parts = model(x)
        loss = parts["loss"]
        if any_rank(not torch.isfinite(loss).item()):
            raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, "
                                     f"step {step + 1}; lower train.lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    return mean_over_ranks(sums, steps)


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


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel: one pass over every parameter instead of a Python loop
    of per-tensor ops (about 2 ms instead of 15 ms a step for the default MoE-VAE on CPU)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


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
