"""Ray Tune sweeps: one plain Tune function per trial, ASHA on a label-free metric.

A trial is the train stage's `train_epoch` in a plain Tune function, not a TorchTrainer
per trial: on a few cores a Train controller plus a worker actor per trial costs CPU and
start-up time for no gain (one trial is one process either way), and plain functions let
`tune.cpus_per_trial`/`tune.gpus_per_trial` (fractions allowed) pack trials directly.

Objective (`tune.metric`; label-free: `val_log_likelihood` or `val_mutual_info`, both
maximised) on the last `tune.val_rows` rows of the train split, which no trial trains on;
pipeline/sweep/trial.py defines them. The training loss is not comparable across trials
(its balancing term scales with the swept weight). Cluster accuracy / NMI on the same rows
are reported as information only, and the report ranks each objective against them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Callable, List, Optional

import torch

from pipeline.core.errors import ConfigError, DataError, Interrupted, TrainError
from pipeline.core.storage import filesystem, join, resolve_storage
from pipeline.core.schema import to_dict
from pipeline.data.load import load_split, read_manifest
from pipeline.data.neighbours import read_neighbours
from pipeline.models.registry import side_input, side_key
from pipeline.params import Params
from pipeline.params.tune import LABEL_METRICS, TUNE_METRICS
from pipeline.sweep.space import check_space, param_space, trial_count
from pipeline.sweep.trial import DIVERGED, TrialSetup, run_trial

Log = Callable[[str], None]


class SweepInterrupted(Interrupted):
    """The sweep stopped before every trial ended (Ctrl-C, SIGTERM: Tune saved its state);
    rerunning continues it. The stage exits 128 + the signal, as the others do."""


def sweep_name(params: Params, manifest: dict) -> str:
    """Stable per (model, train, tune params, data): rerunning resumes the same sweep."""
    blob = json.dumps({"model": to_dict(params.model), "train": to_dict(params.train),
                       "tune": to_dict(params.tune), "data": manifest["splits"]["train"]},
                      sort_keys=True)
    return f"tune-{params.model.kind}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _state_readable(uri: str) -> bool:
    """Tune restores from the newest experiment_state-*.json, copied non-atomically to the
    storage path; a process killed during that copy leaves it empty, and Tune would then
    go on with a broken state instead of failing. `uri`: a local path or any URI."""
    import pyarrow.fs

    fs, path = filesystem(uri)
    states = sorted(i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(path))
                    if PurePosixPath(i.path).name.startswith("experiment_state-")
                    and i.path.endswith(".json"))
    try:
        with fs.open_input_stream(states[-1]) as f:
            return isinstance(json.loads(f.read()), dict)
    except (IndexError, ValueError):
        return False


def say(msg: str) -> None:
    """run_sweep's default log. Not the builtin print itself: Ray's tqdm support may swap
    builtins.print mid-session, and the saved reference would then no longer pickle
    (the progress callback, holding `log`, is pickled into the sweep's state)."""
    print(msg, flush=True)


def run_sweep(params: Params, shard_dir: Path, log: Log = say,
              neighbours: Optional[Path] = None) -> List[dict]:
    """Run (or resume) the sweep; return one dict per trial: {"trial", "config", "status",
    "error", "history": [per-epoch rows]}. Raises SweepInterrupted if it did not end.
    `neighbours`: the neighbours stage's folder; the trials read its distances (their
    training rows' part: a held-out image can be a training image's neighbour, as pixels
    only, never as a label) instead of computing them."""
    check_space(params)  # every value of tune.space builds valid params: before any Ray work
    if params.train.restarts > 1:
        raise ConfigError(f"params.yaml: train.restarts={params.train.restarts} is for the train "
                          f"stage; a sweep trains each trial once, so set it to 1 for sweeps")
    cfg = params.tune
    shard_dir = Path(shard_dir).resolve()
    manifest = read_manifest(shard_dir)
    n = sum(e["rows"] for e in manifest["splits"]["train"])
    if n - cfg.val_rows < params.train.batch_size:
        raise DataError(f"tune.val_rows={cfg.val_rows} leaves {n - cfg.val_rows} of {n} training "
                        f"rows, fewer than one batch of {params.train.batch_size}; lower tune.val_rows")
    if cfg.metric in LABEL_METRICS:
        log(f"tune: WARNING tune.metric={cfg.metric} selects with labels; the sweep is no "
            f"longer unsupervised (see docs/sweeps.md)")
    from pipeline.core.ray_env import init_ray  # sets Ray's env before its import

    log(init_ray())
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, TBXLoggerCallback

    from pipeline.sweep.progress import Progress, last_line

    if cfg.gpus_per_trial > 0 and ray.cluster_resources().get("GPU", 0) < cfg.gpus_per_trial:
        raise TrainError(f"tune.gpus_per_trial={cfg.gpus_per_trial} but Ray sees "
                         f"{ray.cluster_resources().get('GPU', 0):g} GPUs; set it to 0 for CPU")
    epochs = cfg.epochs or params.train.epochs
    if epochs < cfg.grace_period:
        raise ConfigError(f"params.yaml: tune.grace_period={cfg.grace_period} exceeds the "
                          f"{epochs} epochs per trial; lower it or raise tune.epochs")
    # Read once here; with_parameters puts it in the object store, so a node fetches it
    # once for all its trials (a trial's setup_seconds in the table shows what is left).
    data = load_split(shard_dir, "train", with_labels=True)  # labels: validate's information only
    key, side = side_key(params.model), None
    cached = read_neighbours(neighbours, shard_dir)
    cached = cached if cached is None else cached[:n - cfg.val_rows]
    if key is not None:  # the base params' side input, once instead of once per trial
        t0 = time.perf_counter()
        side = side_input(params.model, torch.from_numpy(data.pixels[:n - cfg.val_rows].copy()), cached)
        log(f"tune: side input {key} for every trial that shares it: {time.perf_counter() - t0:.0f}s")
    setup = TrialSetup(base=to_dict(params), pixels=data.pixels, labels=data.labels, epochs=epochs,
                       val_rows=cfg.val_rows, val_iw_samples=cfg.val_iw_samples,
                       threads=max(1, int(cfg.cpus_per_trial)), use_gpu=cfg.gpus_per_trial > 0,
                       side_key=key, side=side, neighbours=cached)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    total = trial_count(cfg.space, cfg.search, cfg.num_samples)
    name = sweep_name(params, manifest)
    # A URI (s3://, gs://, file://) passes through, as in training: on a cluster every
    # node must reach the trials' checkpoints, so they cannot go to a node-local folder.
    storage = resolve_storage(params.train.storage_path)
    path = join(storage, name)
    mode = TUNE_METRICS[cfg.metric]
    # a diverged trial's last row carries no metric (run_trial); Tune checks every row for it
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if tune.Tuner.can_restore(path) and not _state_readable(path):
        aside = f"{name}.unreadable-{int(time.time())}"
        fs, fs_path = filesystem(path)
        fs.move(fs_path, fs_path[: -len(name)] + aside)
        log(f"tune: the saved sweep state in {path} is unreadable (process killed while saving "
            f"it?); moved to {aside}, starting the sweep again")
    if tune.Tuner.can_restore(path):
        log(f"tune: resuming the sweep in {path} (finished and failed trials are kept)")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
    else:
        log(f"tune: {total} trials x up to {epochs} epochs, {cfg.search} search, {cfg.scheduler} "
            f"scheduler on {cfg.metric} ({mode}); state in {path}")
        scheduler = (tune.schedulers.ASHAScheduler(max_t=epochs, grace_period=cfg.grace_period,
                                                   reduction_factor=cfg.reduction_factor)
                     if cfg.scheduler == "asha" else tune.schedulers.FIFOScheduler())
        tuner = tune.Tuner(
            trainable, param_space=param_space(cfg.space, cfg.search),
            tune_config=tune.TuneConfig(
                metric=cfg.metric, mode=mode, scheduler=scheduler, num_samples=cfg.num_samples,
                reuse_actors=True,  # a new trial skips the process start and torch import
                search_alg=tune.search.BasicVariantGenerator(
                    max_concurrent=cfg.max_concurrent_trials, random_state=cfg.seed)),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                # progress.csv per trial feeds Result.metrics_dataframe (QUIET_ENV turns
                # Tune's automatic loggers off); Tune's own TensorBoard logger on request.
                callbacks=[CSVLoggerCallback(), Progress(total, epochs, cfg.metric, mode, log),
                           *([TBXLoggerCallback()] if params.train.tensorboard else [])]))
        if params.train.tensorboard:
            log(f"tune: TensorBoard logs in the trial folders: tensorboard --logdir {path}")
    from pipeline.core.ray_env import head_watch

    with head_watch("sweep", path):  # a dead head: one line and exit 1 in seconds, not Ray's 60 s
        results = tuner.fit()
    ended = results.num_terminated + results.num_errors
    if len(results) < total or ended < len(results):
        raise SweepInterrupted(f"sweep interrupted with {ended} of {total} trials ended; rerun "
                               f"the stage (dvc repro tune) to continue from {path}")
    from ray.tune.result import AUTO_RESULT_KEYS

    tune_keys = {*AUTO_RESULT_KEYS, "checkpoint_dir_name", "should_checkpoint", "done",
                 "trial_id", "experiment_tag"}
    trials = []
    for r in results:
        hist = [] if r.metrics_dataframe is None else r.metrics_dataframe.to_dict("records")
        hist = [{k: v for k, v in row.items() if k not in tune_keys and "/" not in k}
                for row in hist]  # our per-epoch row, without Tune's bookkeeping
        diverged = hist.pop()[DIVERGED] if hist and isinstance(hist[-1].get(DIVERGED), str) else ""
        trials.append({"trial": (r.metrics or {}).get("trial_id") or Path(r.path).name,
                       "config": {k: r.config[k] for k in cfg.space},
                       "status": "failed" if r.error or diverged else
                       ("finished" if hist and hist[-1]["epoch"] >= epochs else "stopped"),
                       "error": last_line(r.error) if r.error else diverged, "history": hist})
    return trials
