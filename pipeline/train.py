"""Training: a pure per-epoch step, the Ray Train per-worker loop, and the driver.

Each worker reads only shards[rank::world] (no Ray Data: MNIST fits in memory, and Ray
Data would need CPUs the 2-core default machine doesn't have). Every epoch reports the
loss parts and throughput with a checkpoint; a restarted worker group resumes from it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from pipeline.config import Params, params_from_dict, to_dict
from pipeline.data import DataError, read_manifest, shard_rows
from pipeline.losses import distributed, sum_over_ranks
from pipeline.models import GenerativeModel, build_model, model_state
from pipeline.restarts import cluster_information, select

STATE_FILE = "state.pt"


class NonFiniteLossError(RuntimeError):
    """Raised on every rank at once when any rank sees a NaN/inf loss."""


class TrainError(RuntimeError):
    """A failed training run, with a one-line reason for the console."""


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Reseeding per (epoch, rank) makes a run resumed from an epoch checkpoint take the
    # same batches and noise as an uninterrupted one.
    return (seed * 1_000_003 + epoch * 10_007 + rank) % (2 ** 63)


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on any DDP rank (one tiny all-reduce; identity without DDP)."""
    if not distributed():  # called every step: no tensor round trip on a single process
        return flag
    return bool(sum_over_ranks(torch.tensor([float(flag)])).item() > 0)


def mean_over_ranks(sums: Dict[str, float], count: int) -> Dict[str, float]:
    keys = sorted(sums)
    t = sum_over_ranks(torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64))
    return {k: float(v) / float(t[-1]) for k, v in zip(keys, t[:-1])}


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


def describe_hardware(device: torch.device, world: int, threads: int) -> str:
    """What trained, for the results table: e.g. '1 worker x AMD EPYC 7B13 (2 threads)'."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [ln.split(":", 1)[1].strip() for ln in
                 (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
                 if ln.startswith("model name")]
        what = f"{names[0] if names else platform.processor() or 'CPU'} ({threads} threads)"
    return f"{world} worker{'s' if world > 1 else ''} x {what}"


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


@dataclass
class Run:
    """One training run inside a worker: its weights, optimizer, seed and epoch records."""
    raw: GenerativeModel
    model: torch.nn.Module  # raw, or its DDP wrapper
    opt: torch.optim.Optimizer
    seed: int  # seeds the weights, batch order and noise (restarts.py: per candidate)
    history: List[Dict] = field(default_factory=list)
    snapshots: List[torch.Tensor] = field(default_factory=list)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; runs on every worker."""
    import ray.train
    import ray.train.torch

    logging.getLogger().setLevel(logging.WARNING)  # Train logs every report at INFO on root
    params = params_from_dict(config["params"])
    tcfg = params.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()

    from pipeline.data import load_split

    shard_dir = Path(config["shard_dir"])
    # uint8 rows stay on the CPU: batches are binarized there (a CPU generator) and moved
    pixels = torch.from_numpy(load_split(shard_dir, "train", rank, world).pixels.copy())
    batch = tcfg.batch_size // world
    # Every rank must take the same number of steps (DDP all-reduces each one), so the
    # epoch length comes from the smallest share, known from the manifest alone.
    manifest = read_manifest(shard_dir)
    steps = min(shard_rows(manifest, "train", r, world) for r in range(world)) // batch
    hardware = describe_hardware(device, world, config["threads"])  # once, not every epoch

    def new_run(seed: int) -> Run:
        torch.manual_seed(seed)  # identical initial weights on every rank
        raw = build_model(params.model).to(device)
        opt = make_optimizer(raw, tcfg.lr)
        return Run(raw, ray.train.torch.prepare_model(raw) if world > 1 else raw, opt, seed)

    def train(run: Run, epoch: int, label: str = "") -> None:
        t0 = time.perf_counter()
        parts = train_epoch(run.model, run.raw, run.opt, pixels, batch, steps, epoch, run.seed,
                            rank, device)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, **parts, "seconds": seconds,
               "images_per_s": steps * batch * world / seconds}
        run.history.append(row)
        if rank == 0:
            shown = "  ".join(f"{k} {parts[k]:.4g}" for k in sorted(parts, key=lambda k: k != "loss"))
            print(f"{label}epoch {epoch + 1}/{tcfg.epochs}  {shown}  {row['images_per_s']:.0f} img/s",
                  flush=True)
            run.snapshots.append(component_snapshot(run.raw, run.seed))

    def report(run: Run, restarts: dict) -> None:
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                save_state(d, run.raw, run.opt, len(run.history), history=json.dumps(run.history),
                           snapshots=torch.stack(run.snapshots), hardware=hardware,
                           seed=run.seed, restarts=json.dumps(restarts))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(run.history[-1], checkpoint=checkpoint)

    def log(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    ckpt, restarts = ray.train.get_checkpoint(), {}
    if ckpt:
        run = new_run(tcfg.seed)
        state = load_state(ckpt, run.raw, run.opt, device)
        run.seed, run.history, run.snapshots = (int(state.get("seed", tcfg.seed)),
                                                json.loads(state["history"]), list(state["snapshots"]))
        restarts = json.loads(state.get("restarts", "{}"))
        log(f"resuming from the checkpoint after epoch {state['epoch']}")
    choosing = not ckpt or len(restarts.get("scores", [])) < tcfg.restarts
    if tcfg.restarts > 1 and choosing:  # restarts.py: keep the most informative candidate
        run, restarts = select(tcfg.restarts, tcfg.restart_epochs, tcfg.seed, new_run, train,
                               lambda r: cluster_information(r.raw, pixels, device), save=report,
                               resume=(run, restarts) if ckpt else None, log=log)
    elif not ckpt:
        run = new_run(tcfg.seed)
    for epoch in range(len(run.history), tcfg.epochs):
        train(run, epoch)
        report(run, restarts)


def run_name(params: Params, manifest: dict) -> str:
    """Stable per (params, data): rerunning an interrupted stage resumes the same run."""
    blob = json.dumps({"params": to_dict(params), "data": manifest["splits"]["train"]}, sort_keys=True)
    return f"{params.model.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def check_before_ray(params: Params, shard_dir: Path) -> dict:
    """Data problems that would otherwise surface deep inside a worker, as one line."""
    manifest = read_manifest(shard_dir)
    world, n_shards = params.train.num_workers, len(manifest["splits"]["train"])
    if world > n_shards:
        raise DataError(f"train.num_workers={world} exceeds the {n_shards} training shards; "
                        f"raise data.shards or lower train.num_workers")
    smallest = min(shard_rows(manifest, "train", r, world) for r in range(world))
    if smallest < params.train.batch_size // world:
        raise DataError(f"worker share of {smallest} rows is smaller than the per-worker batch "
                        f"{params.train.batch_size // world}; lower train.batch_size")
    return manifest


def fit(params: Params, shard_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Train with Ray Train; return the final state {"model", "history", ...}."""
    shard_dir = Path(shard_dir).resolve()
    manifest = check_before_ray(params, shard_dir)
    from pipeline.ray_env import QUIET_ENV, init_ray

    log(init_ray())
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    tcfg = params.train
    resources = ray.cluster_resources()
    use_gpu = tcfg.use_gpu
    if use_gpu == "auto":
        use_gpu = resources.get("GPU", 0) >= tcfg.num_workers
        if not use_gpu:
            log(f"train.use_gpu=auto: {resources.get('GPU', 0):g} GPUs for {tcfg.num_workers} "
                f"workers, training on CPU (gloo)")
    local = not os.environ.get("RAY_ADDRESS")
    cpus = resources.get("CPU", 1) / tcfg.num_workers if local else 1
    per_worker = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    name = run_name(params, manifest)
    from pipeline.storage import join, resolve_storage

    storage = resolve_storage(tcfg.storage_path)  # a URI (s3://, gs://) passes through
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"params": to_dict(params), "shard_dir": str(shard_dir),
                           "threads": max(1, int(cpus))},
        scaling_config=ray.train.ScalingConfig(num_workers=tcfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=tcfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train's INFO lines (and, without a dashboard, the placement-group cleaner's
            # state-API warnings) would bury the per-epoch progress; errors still show.
            logging_config=ray.train.LoggingConfig(log_level="ERROR"),
            worker_runtime_env={"env_vars": dict(QUIET_ENV)}),
    )
    log(f"training {params.model.kind} on {tcfg.num_workers} worker(s) "
        f"({'GPU, nccl' if use_gpu else 'CPU, gloo'}); checkpoints in {join(storage, name)}")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        failures = getattr(e, "worker_failures", {}) or {}
        causes = sorted({str(f).strip().splitlines()[-1] for f in failures.values()}) or [str(e)]
        raise TrainError(f"training failed: {causes[0]}; the last good checkpoint stays in "
                         f"{join(storage, name)}") from e
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    state["history"] = json.loads(state["history"])
    state["restarts"] = json.loads(state.get("restarts", "{}"))
    state["run_dir"] = join(storage, name)
    return state
