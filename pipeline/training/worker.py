"""The Ray Train per-worker loop: read this rank's shards, train (with label-free
restarts if asked), report every epoch with a checkpoint, resume from the last one.

Each worker reads only shards[rank::world] (no Ray Data: MNIST fits in memory, and Ray
Data would need CPUs the 2-core default machine doesn't have).
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import torch

from pipeline.data.shards import load_split, read_manifest, shard_rows
from pipeline.models.base import GenerativeModel
from pipeline.models.registry import build_model
from pipeline.params import params_from_dict
from pipeline.training.loop import (component_snapshot, describe_hardware, load_state,
                                    make_optimizer, save_state, train_epoch)
from pipeline.training.restarts import cluster_information, select


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
