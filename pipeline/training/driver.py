"""The train stage's driver: check the data, start or attach to Ray, run a TorchTrainer
(Train V2) under a name derived from params and data, and return the final state."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from pipeline.core.errors import DataError, Interrupted, TrainError
from pipeline.core.failures import WriteError, first_line
from pipeline.core.figures import grid_image, over_epochs
from pipeline.core.io import atomic_path, write_json
from pipeline.core.schema import to_dict
from pipeline.core.storage import delete_tree, join, resolve_storage
from pipeline.data.load import check_shards, read_manifest
from pipeline.data.neighbours import read_neighbours
from pipeline.params import Params
from pipeline.training.loop import PORTABLE_CPU_ENV, STATE_FILE, best_epoch
from pipeline.training.worker import (WorkerFailed, checkpoints, registered_history,
                                      train_loop_per_worker)


def run_name(params: Params, manifest: dict) -> str:
    """Stable per (params, data): rerunning an interrupted stage resumes the same run."""
    blob = json.dumps({"params": to_dict(params), "data": manifest["splits"]["train"]}, sort_keys=True)
    return f"{params.model.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def check_before_ray(params: Params, shard_dir: Path) -> dict:
    """Data problems that would otherwise surface deep inside a worker, as one line."""
    manifest = read_manifest(shard_dir)
    check_shards(shard_dir, "train")  # columns, types, rows: the footers only
    tcfg = params.train
    rows = sum(e["rows"] for e in manifest["splits"]["train"])
    if tcfg.holdout and rows - tcfg.holdout < tcfg.global_batch:
        raise DataError(f"train.holdout={tcfg.holdout} leaves {max(rows - tcfg.holdout, 0)} of the "
                        f"{rows} training rows, fewer than one global batch of {tcfg.global_batch}; "
                        f"lower train.holdout")
    if rows < tcfg.global_batch:
        raise DataError(f"the {rows} training rows are fewer than one global batch of "
                        f"{tcfg.global_batch}; lower train.batch_size")
    return manifest


def failure_cause(failure: BaseException) -> str:
    """One line for a worker's failure as Ray Train reports it: the line a worker raised
    (worker.WorkerFailed), Ray's memory monitor killing it, or the exception's last line."""
    import ray.exceptions

    base = getattr(failure, "_base_exc", failure)  # Train wraps it with its traceback text
    if isinstance(base, WorkerFailed):
        return str(base)
    if isinstance(base, ray.exceptions.OutOfMemoryError):
        return ("a worker ran out of memory and Ray stopped it; lower train.batch_size or the "
                "model's sizes, or give the workers more memory")
    lines = str(failure).strip().splitlines()
    return lines[-1] if lines else type(base).__name__


def what_is_kept(run_dir: str) -> str:
    epoch, candidate = checkpoints(run_dir)
    if epoch or candidate:
        return (f"the checkpoint after {f'epoch {epoch}' if epoch else f'restart candidate {candidate}'}"
                f" is in {run_dir}")
    return "no checkpoint was written"


def interrupted(run_dir: str, epochs: int) -> Interrupted:
    epoch, candidate = checkpoints(run_dir)
    if epoch:
        return Interrupted(f"train: interrupted at epoch {epoch + 1}/{epochs}; rerun to resume from "
                           f"the checkpoint after epoch {epoch} in {run_dir}")
    if candidate:
        return Interrupted(f"train: interrupted while choosing a restart; rerun to resume after "
                           f"candidate {candidate} from {run_dir}")
    return Interrupted("train: interrupted before the first checkpoint; rerun to start again")


class LiveLog:
    """The per-epoch losses, logged while the workers train: into the stage's dvclive
    folder (watch it with `dvc plots show`) and, with train.tensorboard, a TensorBoard
    log. Rows come from the checkpoints Ray Train registers (registered_history), so a
    resumed run logs its earlier epochs again and the curves stay whole."""

    def __init__(self, live_dir: Optional[Path], tensorboard_dir: Optional[str]):
        from pipeline.core.tracking import open_live, tensorboard_writer

        self.live = open_live(live_dir) if live_dir else None
        self.tensorboard = tensorboard_writer(tensorboard_dir)
        self.logged = 0

    def log(self, history: List[Dict]) -> None:
        from pipeline.core.tracking import log_epochs

        new = [row for row in history if row["epoch"] > self.logged]
        if new:
            self.logged = log_epochs(self.live, new, self.tensorboard)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def fit_interruptibly(trainer, tick: Callable[[], None] = lambda: None, every: float = 1.0):
    """trainer.fit() in a helper thread, so that Ctrl-C reaches this one as KeyboardInterrupt;
    `tick()` runs here every `every` seconds meanwhile (the live logs).

    In the main thread Ray Train installs its own SIGINT handler, which aborts the run and
    leaves the process with exit status 1 and no word of what was kept. Off the main
    thread it installs none; the caller then reports the last checkpoint and exits 130,
    and Ray's exit hook stops the run (its checkpoints stay, to resume from)."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001  (re-raised in the calling thread)
            box["error"] = e

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    next_tick = time.monotonic() + every
    while thread.is_alive():
        thread.join(0.2)
        if time.monotonic() >= next_tick:
            tick()
            next_tick = time.monotonic() + every
    if "error" in box:
        raise box["error"]
    return box["result"]


def fit(params: Params, shard_dir: Path, log: Callable[[str], None] = print,
        live_dir: Optional[Path] = None, neighbours: Optional[Path] = None) -> dict:
    """Train with Ray Train; return the final state {"model", "history", ...}. The epochs'
    losses are logged as they come into the dvclive folder `live_dir` (if given) and, with
    train.tensorboard, into <train.storage_path>/tensorboard/<run name>. `neighbours`: the
    neighbours stage's folder, read by a model that needs them instead of computing them."""
    shard_dir = Path(shard_dir).resolve()
    manifest = check_before_ray(params, shard_dir)
    if neighbours is not None:
        read_neighbours(neighbours, shard_dir)  # made from these shards: checked before Ray
        neighbours = Path(neighbours).resolve()
    from pipeline.core.ray_env import QUIET_ENV, init_ray  # sets Ray's env before its import

    log(init_ray())
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.training.loopback import LoopbackTorchConfig, loopback_env

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
    threads = tcfg.threads or max(1, int(cpus))
    per_worker = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    name = run_name(params, manifest)
    storage = resolve_storage(tcfg.storage_path)  # a URI (s3://, gs://) passes through
    run_dir = join(storage, name)
    backend = "nccl" if use_gpu else "gloo"
    env = {**QUIET_ENV, **(loopback_env() if local else {}),
           **(PORTABLE_CPU_ENV if tcfg.portable_cpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"params": to_dict(params), "shard_dir": str(shard_dir), "threads": threads,
                           "run_dir": run_dir, "neighbours": neighbours and str(neighbours)},
        # local: rendezvous through a file and loopback sockets only (loopback.py)
        torch_config=LoopbackTorchConfig(backend=backend) if local else TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(num_workers=tcfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=tcfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train's INFO lines (and, without a dashboard, the placement-group cleaner's
            # state-API warnings) would bury the per-epoch progress; errors still show.
            logging_config=ray.train.LoggingConfig(log_level="ERROR"),
            worker_runtime_env={"env_vars": env}),
    )
    log(f"training {params.model.kind} on {tcfg.num_workers} worker(s) "
        f"({'GPU, nccl' if use_gpu else 'CPU, gloo'}); checkpoints in {run_dir}")
    tensorboard = join(storage, "tensorboard", name) if tcfg.tensorboard else None
    if tensorboard:
        log(f"train: TensorBoard logs in {tensorboard}  (tensorboard --logdir {join(storage, 'tensorboard')})")
    live = LiveLog(live_dir, tensorboard)

    try:
        # a URI's snapshot file is read over the network: poll it less often
        result = fit_interruptibly(trainer, lambda: live.log(registered_history(run_dir)),
                                   every=1.0 if "://" not in storage else 10.0)
    except ray.train.TrainingFailedError as e:
        failures = getattr(e, "worker_failures", {}) or {}
        causes = sorted({failure_cause(f) for f in failures.values()}) or [first_line(e)]
        raise TrainError(f"training failed: {causes[0]}; {what_is_kept(run_dir)}") from None
    except KeyboardInterrupt:
        ray.shutdown()  # the run stops here, so the checkpoint named is the one kept
        raise interrupted(run_dir, tcfg.epochs) from None
    error = (result.return_value or {}).get("error")
    if error:  # not retried: the same checkpoint would fail the same way (worker.py)
        raise TrainError(f"training stopped: {error}; {what_is_kept(run_dir)}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    for key in ("history", "timings", "restarts", "environment"):
        state[key] = json.loads(state.get(key, "{}" if key in ("restarts", "environment") else "[]"))
    if "best_model" in state:  # train.early_stopping: the best held-out epoch's weights
        state["model"] = state.pop("best_model")
        state["best_epoch"] = best_epoch(state["history"])
    live.log(state["history"])  # the last epochs, if the run ended between two polls
    live.close()
    state["run_dir"] = run_dir
    return state


def write_outputs(state: dict, params: Params, model_path: Path, live_dir: Path, record: Path,
                  log: Callable[[str], None] = print) -> None:
    """The train stage's outputs from fit()'s final state, each written atomically (the
    dvclive folder as a whole, replacing the one logged live); then the finished run's
    checkpoints are deleted (nothing is left to resume).

    Results and timings are kept apart: the dvclive folder holds only what params, seed
    and the numerics decide (two runs on one machine give the same bytes); `record` holds
    the wall time, throughput and the environment that repeating the run needs."""
    try:
        _write_outputs(state, params, model_path, live_dir, record)
    except WriteError as e:  # a full disk, say: the finished run stays, to write them from
        raise WriteError(f"{e}; the trained model stays in {state['run_dir']}, so a rerun "
                         f"only writes the outputs") from None
    kept = delete_tree(state["run_dir"])
    if kept:
        log(f"train: {kept}; delete it by hand")
    log(f"train: wrote {model_path}, {live_dir}/ (metrics.json, plots/), {record}")


def _write_outputs(state: dict, params: Params, model_path: Path, live_dir: Path,
                   record: Path) -> None:
    from pipeline.core.tracking import log_epochs, open_live

    with atomic_path(model_path) as tmp:
        torch.save(state["model"], tmp)
    history, timings, restarts = state["history"], state["timings"], state["restarts"]
    snapshots = state["snapshots"].numpy()  # (E, C, D) uint8: one sample per component
    with atomic_path(live_dir) as tmp:
        live = open_live(tmp)
        log_epochs(live, history)  # plots/metrics/<loss part>.tsv, step = epoch
        for epoch, snapshot in enumerate(snapshots, 1):  # a slider in Studio / VS Code
            live.log_image(f"components/{epoch}.png", grid_image(snapshot[None]))
        rows, _ = over_epochs(snapshots)  # rows: evenly spread epochs, first and last
        live.log_image("components_over_epochs.png", grid_image(rows))
        live.summary.update({
            "epochs": history[-1]["epoch"],
            "parameters": sum(v.numel() for v in state["model"]["state_dict"].values()),
            **({"best_epoch": state["best_epoch"]} if "best_epoch" in state else {}),
            **({"restarts": {k: v for k, v in restarts.items() if k != "discarded_seconds"}}
               if restarts else {}),
        })
        live.make_summary()
    write_json(record, {
        # the discarded restarts' epochs count: the wall time of the whole recipe
        # and so does the side input made before them (model.*.consistency_radius: knn)
        # and train.holdout's scoring after each epoch
        "train_seconds": sum(t["seconds"] + t.get("held_out_seconds", 0.0) for t in timings)
        + restarts.get("discarded_seconds", 0.0)
        + float(state.get("side_seconds", 0.0)),
        "images_per_s": timings[-1]["images_per_s"] if timings else None,
        "hardware": state.get("hardware", "unknown"),
        # what DDP ran: the per-worker batch and the lr that lr_scaling made of train.lr
        "batch": {"global": params.train.global_batch, "per_worker": params.train.worker_batch,
                  "lr": params.train.scaled_lr},
        "environment": state["environment"],
        "epochs": timings,
    })
