"""The train stage's driver: check the data, start or attach to Ray, run a TorchTrainer
(Train V2) under a name derived from params and data, and return the final state."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

from pipeline.core.errors import DataError, TrainError
from pipeline.core.figures import save_components_over_epochs
from pipeline.core.io import atomic_path, write_json, write_rows_csv
from pipeline.core.schema import to_dict
from pipeline.core.storage import delete_tree, join, resolve_storage
from pipeline.data.shards import read_manifest, shard_rows
from pipeline.params import Params
from pipeline.training.loop import STATE_FILE
from pipeline.training.worker import train_loop_per_worker


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
    from pipeline.core.ray_env import QUIET_ENV, init_ray  # sets Ray's env before its import

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


def write_outputs(state: dict, params: Params, model_path: Path, curves: Path, metrics: Path,
                  snapshots: Path, log: Callable[[str], None] = print) -> None:
    """The train stage's outputs from fit()'s final state, each written atomically; then
    the finished run's checkpoints are deleted (nothing is left to resume)."""
    with atomic_path(model_path) as tmp:
        torch.save(state["model"], tmp)
    history = state["history"]
    write_rows_csv(curves, history)
    save_components_over_epochs(snapshots, state["snapshots"].numpy(), params.model.kind)
    last, restarts = history[-1], state["restarts"]
    write_json(metrics, {
        "final": {k: v for k, v in last.items() if k not in ("epoch", "seconds")},
        "epochs": last["epoch"],
        # the discarded restarts' epochs count: the wall time of the whole recipe
        "train_seconds": sum(r["seconds"] for r in history) + restarts.get("discarded_seconds", 0.0),
        "parameters": sum(v.numel() for v in state["model"]["state_dict"].values()),
        "hardware": state.get("hardware", "unknown"),
        **({"restarts": restarts} if restarts else {}),
    })
    kept = delete_tree(state["run_dir"])
    if kept:
        log(f"train: {kept}; delete it by hand")
    log(f"train: wrote {model_path}, {curves}, {snapshots}, {metrics}")
