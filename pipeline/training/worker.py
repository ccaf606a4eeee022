"""The Ray Train per-worker loop: read the training shards, train (with label-free
restarts if asked), report every epoch with a checkpoint, resume from the last one.

Each worker reads the whole training split, every shard (no Ray Data: MNIST fits in
memory, and Ray Data would need CPUs the 2-core default machine doesn't have), and steps
on its slice of each global batch (loop.train_epoch): N workers see the images one does.

A failure that a retry cannot fix (corrupt data, a non-finite loss) is agreed on by every
rank and *returned* as {"error": line}, not raised: Ray Train retries any raised worker
error `train.max_failures` times from the same checkpoint, which would only fail again,
and prints each worker's traceback.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from pipeline.core.distributed import any_rank, first_message
from pipeline.core.errors import PipelineError
from pipeline.core.failures import WriteError, describe, write_error
from pipeline.core.storage import delete_tree, filesystem, join
from pipeline.data.load import load_split
from pipeline.evaluation.metrics import prepare_test
from pipeline.models.base import GenerativeModel
from pipeline.data.neighbours import read_neighbours
from pipeline.models.registry import build_model, side_input
from pipeline.params import params_from_dict
from pipeline.training.loop import (STATE_FILE, best_epoch, compiled, component_snapshot,
                                    describe_environment, describe_hardware, held_out_nll, kept_state,
                                    load_state, make_optimizer, out_of_patience, save_state,
                                    set_deterministic, set_lr, train_epoch)
from pipeline.training.restarts import cluster_information, select


@dataclass
class Run:
    """One training run inside a worker: its weights, optimizer, seed and epoch records."""
    raw: GenerativeModel
    model: torch.nn.Module  # raw, or its DDP wrapper
    opt: torch.optim.Optimizer
    seed: int  # seeds the weights, batch order and noise (restarts.py: per candidate)
    history: List[Dict] = field(default_factory=list)  # per epoch: the loss parts only
    timings: List[Dict] = field(default_factory=list)  # per epoch: seconds, images/s
    snapshots: List[torch.Tensor] = field(default_factory=list)
    best: Optional[dict] = None  # train.early_stopping: the best held-out epoch's model_state


# Checkpoint folder names: the driver tells from them alone what an interrupted run kept.
EPOCH_CKPT, RESTART_CKPT = "checkpoint_epoch", "checkpoint_restart"


def registered(run_dir: str) -> Tuple[str, Dict]:
    """(folder name, reported metrics) of the last checkpoint Ray Train has registered in
    its snapshot file (it can lag the newest folder by a moment); ("", {}) for none."""
    try:
        fs, path = filesystem(join(run_dir, "checkpoint_manager_snapshot.json"))
        with fs.open_input_stream(path) as f:
            latest = json.loads(f.read())["latest_checkpoint_result"]
        return latest["checkpoint_dir_name"], latest.get("metrics") or {}
    except Exception:  # noqa: BLE001  (no run yet, nothing registered, unreachable storage)
        return "", {}


def registered_history(run_dir: str) -> List[Dict]:
    """The per-epoch loss rows of the run as of its last registered epoch checkpoint: what
    the driver logs live (dvclive, TensorBoard) while the workers train."""
    name, metrics = registered(run_dir)
    return json.loads(metrics.get("history", "[]")) if name.startswith(EPOCH_CKPT) else []


def checkpoints(run_dir: str) -> Tuple[int, int]:
    """(last epoch, last restart candidate) of the checkpoint a rerun resumes from, 0 for
    none: the one Ray Train has registered; the worker names the folders (EPOCH_CKPT...)."""
    name, _ = registered(run_dir)
    epoch = int(name[len(EPOCH_CKPT):]) if name.startswith(EPOCH_CKPT) else 0
    candidate = int(name[len(RESTART_CKPT):]) if name.startswith(RESTART_CKPT) else 0
    return epoch, candidate


def wait_until_registered(run_dir: str, epoch: int, timeout: float = 10.0) -> None:
    """Block until Ray Train has registered the checkpoint of `epoch` (it does so at its
    next poll of the workers, up to RAY_TRAIN_HEALTH_CHECK_INTERVAL_S later), so that the
    epoch line printed after it is true: a run killed from then on resumes after `epoch`."""
    deadline = time.monotonic() + timeout
    while checkpoints(run_dir)[0] < epoch and time.monotonic() < deadline:
        time.sleep(0.05)


class WorkerFailed(Exception):
    """What a worker raises for a failure it cannot return alone (see train_loop_per_worker):
    its message is the one line the driver prints."""


def quiet_console() -> Optional[str]:
    """Keep worker tracebacks out of the console: Ray Train logs a failed training
    function's traceback to its console handler and to its worker log file; only the file
    keeps it. Returns that file's path (the error lines point to it)."""
    from ray.train.v2._internal.logging.logging import (SessionFileHandler,
                                                         get_train_application_worker_log_path)

    def no_traceback(record: logging.LogRecord) -> bool:
        return not (record.exc_info or "Traceback (most recent call last)" in str(record.msg))

    for handler in logging.getLogger("ray.train").handlers:
        if not isinstance(handler, SessionFileHandler):
            handler.addFilter(no_traceback)
    return get_train_application_worker_log_path()


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train entry point; runs on every worker. Returns {} or {"error": one line}.

    Any other failure becomes one line too (core.failures.describe), its traceback going
    to Ray Train's worker log, not the console. A single worker returns a failure no retry
    can mend (a full disk, memory); with several, the others may be waiting for this one
    in a collective, so it raises WorkerFailed and Ray Train stops the group."""
    log_file = quiet_console()
    try:
        _train(config)
        return {}
    except Exception as e:  # noqa: BLE001  (one line here, the traceback in the log)
        if isinstance(e, PipelineError) and not isinstance(e, WriteError):
            return {"error": str(e)}  # raised on every rank together (module docstring)
        line, retryable = describe(e, config.get("run_dir"))
        logging.getLogger("ray.train").error("training failed: %s", line, exc_info=True)
        line += f" (traceback in {log_file})" if log_file and not isinstance(e, WriteError) else ""
        import ray.train

        if retryable or ray.train.get_context().get_world_size() > 1:
            raise WorkerFailed(line) from None
        return {"error": line}


def _train(config: dict) -> None:
    import ray.train
    import ray.train.torch

    logging.getLogger().setLevel(logging.WARNING)  # Train logs every report at INFO on root
    params = params_from_dict(config["params"])
    tcfg = params.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    set_deterministic(tcfg.deterministic)  # before any CUDA work
    device = ray.train.torch.get_device()

    shard_dir = Path(config["shard_dir"])
    # uint8 rows live on the training device (47 MB for all of MNIST): batches are drawn,
    # sliced and binarized there, with no host-to-device copy in the step loop
    try:
        rows = load_split(shard_dir, "train").pixels
        problem = ""
    except PipelineError as e:  # a corrupt shard (or one rank's bad read): agree before DDP
        rows, problem = None, str(e)
    problem = first_message(problem)
    if problem:
        raise PipelineError(problem)
    # train.holdout: the last rows are scored after every epoch, never trained on
    kept = len(rows) - tcfg.holdout
    pixels, held_rows, held = torch.from_numpy(rows[:kept].copy()).to(device), rows[kept:], {}
    batch, steps = tcfg.worker_batch, pixels.shape[0] // tcfg.global_batch
    t0 = time.perf_counter()
    cached = read_neighbours(config.get("neighbours") and Path(config["neighbours"]), shard_dir)
    side = side_input(params.model, pixels, cached if cached is None else cached[:kept].to(device))
    side_seconds = time.perf_counter() - t0  # part of the recipe's time (the run record)
    hardware = describe_hardware(device, world, config["threads"])  # once, not every epoch
    environment = describe_environment(device, config["threads"])

    def new_run(seed: int) -> Run:
        torch.manual_seed(seed)  # identical initial weights on every rank
        raw = build_model(params.model).to(device)
        opt = make_optimizer(raw, tcfg.scaled_lr)
        # a model that leaves parameters without a gradient in some epochs (a manager fixed
        # after model.moe_vae.manager_epochs) needs DDP to look for them at each step
        ddp = {"find_unused_parameters": True} if raw.skips_parameters else None
        model = ray.train.torch.prepare_model(raw, parallel_strategy_kwargs=ddp) if world > 1 else raw
        return Run(raw, compiled(model, tcfg.compile), opt, seed)

    def train(run: Run, epoch: int, label: str = "") -> None:
        scale = run.raw.batch_scale(epoch)  # > 1: a phase on larger batches (expert_batch_scale)
        b, n = batch * scale, steps // scale  # this epoch's worker batch and steps
        if tcfg.lr_schedule != "constant":  # set every epoch, so a resumed run gets it too
            set_lr(run.opt, tcfg.epoch_lr(epoch))
        t0 = time.perf_counter()
        parts = train_epoch(run.model, run.raw, run.opt, pixels, b, n, epoch, run.seed, rank, device,
                            world, side)
        seconds = time.perf_counter() - t0
        timing = {"epoch": epoch + 1, "seconds": seconds, "global_batch": b * world,
                  "images_per_s": n * b * world / seconds, "lr": run.opt.param_groups[0]["lr"]}
        if tcfg.holdout:  # every rank scores all of them, so every rank sees the same score
            if "x" not in held:  # prepared once, by the seed every run shares (evaluate.seed)
                held["x"] = prepare_test(run.raw, held_rows, params.evaluate.seed).to(device)
            parts["held_out_nll"] = held_out_nll(run.raw, held["x"], tcfg.holdout_samples,
                                                 params.evaluate.seed)
            timing["held_out_seconds"] = time.perf_counter() - t0 - seconds  # the recipe's time too
        run.history.append({"epoch": epoch + 1, **parts})
        if tcfg.early_stopping and rank == 0 and best_epoch(run.history) == epoch + 1:
            run.best = kept_state(run.raw)
        run.timings.append(timing)
        if rank == 0:
            run.snapshots.append(component_snapshot(run.raw, run.seed))
        if label:  # a restart candidate's epoch: never checkpointed on its own
            show(run, label)

    def show(run: Run, label: str = "") -> None:
        """The epoch line, printed once the epoch's checkpoint (if any) exists."""
        if rank == 0:
            parts, timing = run.history[-1], run.timings[-1]
            shown = "  ".join(f"{k} {parts[k]:.4g}" for k in sorted(parts, key=lambda k: k != "loss")
                              if k != "epoch")
            left = (tcfg.epochs - parts["epoch"]) * sum(t["seconds"] for t in run.timings[-3:]) \
                / len(run.timings[-3:])  # the last few epochs' pace
            eta = f"  ETA {int(left // 60)}m{int(left % 60):02d}s" if not label else ""
            print(f"{label}epoch {parts['epoch']}/{tcfg.epochs}  {shown}  "
                  f"{timing['images_per_s']:.0f} img/s{eta}", flush=True)

    def report(run: Run, restarts: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                try:
                    save_state(d, run.raw, run.opt, len(run.history), history=json.dumps(run.history),
                               timings=json.dumps(run.timings), snapshots=torch.stack(run.snapshots),
                               hardware=hardware, environment=json.dumps(environment), seed=run.seed,
                               restarts=json.dumps(restarts), side_seconds=side_seconds,
                               **({"best_model": run.best} if run.best else {}))
                except (OSError, RuntimeError) as e:
                    raise write_error(Path(d) / STATE_FILE, e, "TMPDIR") from e
                checkpoint = ray.train.Checkpoint.from_directory(d)
            try:  # the history rides along for the driver's live logs (registered_history)
                ray.train.report({"epoch": len(run.history), "history": json.dumps(run.history)},
                                 checkpoint=checkpoint, checkpoint_dir_name=name)
            except OSError as e:  # storage full, say: drop the half-copied checkpoint
                target = join(config["run_dir"], name) if config.get("run_dir") else None
                if target and rank == 0:
                    delete_tree(target)
                raise write_error(target or name, e, "train.storage_path") from e

    def log(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    if side is not None:
        log(f"side input for training: {tuple(side.shape)} in {side_seconds:.0f}s")

    ckpt, restarts = ray.train.get_checkpoint(), {}
    if ckpt:
        run = new_run(tcfg.seed)
        state = load_state(ckpt, run.raw, run.opt, device)
        run.seed, run.history, run.snapshots = (int(state.get("seed", tcfg.seed)),
                                                json.loads(state["history"]), list(state["snapshots"]))
        run.timings = json.loads(state.get("timings", "[]"))
        run.best = state.get("best_model")
        restarts = json.loads(state.get("restarts", "{}"))
        log(f"resuming from the checkpoint after epoch {state['epoch']}")
    choosing = not ckpt or len(restarts.get("scores", [])) < tcfg.restarts
    if tcfg.restarts > 1 and choosing:  # restarts.py: keep the most informative candidate
        run, restarts = select(tcfg.restarts, tcfg.restart_epochs, tcfg.seed, new_run, train,
                               lambda r: cluster_information(r.raw, pixels[rank::world], device),
                               save=lambda r, rec: report(r, rec, f"{RESTART_CKPT}{len(rec['scores'])}"),
                               resume=(run, restarts) if ckpt else None, log=log)
    elif not ckpt:
        run = new_run(tcfg.seed)
    for epoch in range(len(run.history), tcfg.epochs):
        if any_rank(out_of_patience(run.history, tcfg.early_stopping)):
            log(f"early stopping: held_out_nll last improved at epoch {best_epoch(run.history)}, "
                f"{tcfg.early_stopping} epochs ago; the model keeps that epoch's weights")
            break
        train(run, epoch)
        report(run, restarts, f"{EPOCH_CKPT}{epoch + 1:04d}")
        if rank == 0 and config.get("run_dir"):
            wait_until_registered(config["run_dir"], epoch + 1)
        show(run)

