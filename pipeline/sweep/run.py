"""Ray Tune sweeps: one plain Tune function per trial, ASHA on a label-free metric.

A trial is the train stage's `train_epoch` in a plain Tune function, not a TorchTrainer
per trial: on a few cores a Train controller plus a worker actor per trial costs CPU and
start-up time for no gain (one trial is one process either way), and plain functions let
`tune.cpus_per_trial`/`tune.gpus_per_trial` (fractions allowed) pack trials directly.

Objective (default `val_log_likelihood`, mode max): the importance-sampled log p(x) of the
last `tune.val_rows` rows of the train split, which no trial trains on. The training loss
is not comparable across trials (its balancing term scales with the swept weight); log
p(x) is. Cluster accuracy / NMI on the same rows are reported as information only.
"""
from __future__ import annotations

import hashlib
import json
import os
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from pipeline.core.errors import ConfigError, DataError, TrainError
from pipeline.core.storage import filesystem, join, resolve_storage
from pipeline.core.schema import apply_overrides, to_dict
from pipeline.data.load import load_split, read_manifest
from pipeline.data.neighbours import read_neighbours
from pipeline.evaluation.likelihood import iw_log_likelihood
from pipeline.evaluation.metrics import cluster_scores, prepare_test
from pipeline.models.registry import build_model, side_input, side_key
from pipeline.params import Params, params_from_dict
from pipeline.params.tune import LABEL_METRICS, TUNE_METRICS
from pipeline.sweep.space import check_space, param_space, trial_count
from pipeline.training.loop import (NonFiniteLossError, compiled, load_state, make_optimizer,
                                    save_state, set_deterministic, train_epoch)

Log = Callable[[str], None]


DIVERGED = "diverged"  # the key of a trial's last row when its loss went non-finite


class SweepInterrupted(TrainError):
    """The sweep stopped before every trial ended (Ctrl-C); rerunning continues it."""


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares; the swept values arrive as Tune's `config`."""
    base: dict  # to_dict(params) of params.yaml
    shard_dir: str  # absolute: Tune runs trials in their own working directories
    epochs: int
    val_rows: int
    val_iw_samples: int
    threads: int
    use_gpu: bool
    side_key: Optional[tuple] = None  # the base params' side input, made once for every
    side: Optional[torch.Tensor] = None  # trial whose side_key is the same (CPU, (N_train, ...))
    neighbours: Optional[torch.Tensor] = None  # the neighbours stage's (N_train, k), for the rest


@torch.no_grad()
def validate(model, x: torch.Tensor, labels: np.ndarray, iw_samples: int, seed: int,
             batch: int = 500) -> Dict[str, float]:
    """Held-out scores of one model on (N, 784) prepared `x`. The same `seed` for every
    trial and epoch gives common random numbers, so differences are less noisy."""
    model.eval()
    torch.manual_seed(seed)
    ll, loss, probs = [], 0.0, []
    for xb in x.split(batch):
        ll.append(iw_log_likelihood(model, xb, iw_samples, iw_samples))  # (b,)
        loss += float(model(xb)["loss"]) * len(xb)
        p = model.cluster_probs(xb)  # (b, C) or None
        if p is not None:
            probs.append(p)
    model.train()
    out = {"val_log_likelihood": float(torch.cat(ll).mean()), "val_loss": loss / len(x),
           "cluster_accuracy": float("nan"), "nmi": float("nan")}
    if probs:
        p = torch.cat(probs)
        scores = cluster_scores(labels, p.argmax(1).cpu().numpy(), p.shape[1])
        out.update(cluster_accuracy=scores["cluster_accuracy"], nmi=scores["nmi"])
    return out


def trial_params(base: dict, overrides: Dict[str, Any]) -> Params:
    """Params of one trial: the base params dict with the trial's dotted overrides."""
    raw = apply_overrides(base, overrides)
    raw["tune"]["space"] = {}  # checked once, before the sweep
    return params_from_dict(raw)


def trial_side(params: Params, setup: TrialSetup, pixels: torch.Tensor) -> Optional[torch.Tensor]:
    """The trial's side input on pixels' device: run_sweep's, made once, where the trial's
    side_key is the base params' (a swept lr or weight), else the trial's own."""
    if setup.side_key is not None and side_key(params.model) == setup.side_key:
        return setup.side.to(pixels.device)
    cached = setup.neighbours
    return side_input(params.model, pixels, cached if cached is None else cached.to(pixels.device))


def run_trial(config: dict, setup: TrialSetup) -> None:
    """Tune function: train one configuration for `setup.epochs`, reporting each epoch."""
    from ray import tune

    logging.getLogger("ray").setLevel(logging.WARNING)  # "Checkpoint created" per epoch
    params = trial_params(setup.base, config)
    tcfg = params.train
    torch.set_num_threads(setup.threads)
    set_deterministic(tcfg.deterministic)  # before any CUDA work
    device = torch.device("cuda" if setup.use_gpu and torch.cuda.is_available() else "cpu")
    data = load_split(Path(setup.shard_dir), "train", with_labels=True)
    n_train = len(data.pixels) - setup.val_rows  # rows [n_train:] are held out
    pixels = torch.from_numpy(data.pixels[:n_train].copy()).to(device)  # batches drawn there
    steps = n_train // tcfg.batch_size

    torch.manual_seed(tcfg.seed)
    model = build_model(params.model).to(device)
    opt = make_optimizer(model, tcfg.lr)
    step = compiled(model, tcfg.compile)
    x_val = prepare_test(model, data.pixels[n_train:], params.evaluate.seed).to(device)
    side = trial_side(params, setup, pixels)  # e.g. each image's VAT radius (knn), label-free
    labels_val = data.labels[n_train:]
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt:  # a resumed sweep continues this trial after its last finished epoch
        start = load_state(ckpt, model, opt, device)["epoch"]
    for epoch in range(start, setup.epochs):
        t0 = time.perf_counter()
        try:
            scale = model.batch_scale(epoch)  # > 1: a phase on larger batches (expert_batch_scale)
            b, n = tcfg.batch_size * scale, steps // scale  # this epoch's batch and steps
            parts = train_epoch(step, model, opt, pixels, b, n, epoch, tcfg.seed, 0, device, side=side)
        except NonFiniteLossError as e:
            # Not transient: a retry from the last checkpoint (tune.max_failures) would
            # diverge the same way. End the trial with a row that says so instead.
            # No metric in it: ASHA skips such a row (and run_sweep lets Tune accept it).
            tune.report({"epoch": epoch + 1, DIVERGED: str(e)})
            return
        seconds = time.perf_counter() - t0
        val = validate(model, x_val, labels_val, setup.val_iw_samples, params.evaluate.seed)
        row = {"epoch": epoch + 1, **parts, **val, "seconds": seconds,
               "images_per_s": n * b / seconds}
        with tempfile.TemporaryDirectory() as d:
            save_state(d, model, opt, epoch + 1)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))


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


def run_sweep(params: Params, shard_dir: Path, log: Log = print,
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
    key, side = side_key(params.model), None
    cached = read_neighbours(neighbours, shard_dir)
    cached = cached if cached is None else cached[:n - cfg.val_rows]
    if key is not None:  # the base params' side input, once instead of once per trial
        t0 = time.perf_counter()
        pixels = torch.from_numpy(load_split(shard_dir, "train").pixels[:n - cfg.val_rows].copy())
        side = side_input(params.model, pixels, cached)
        log(f"tune: side input {key} for every trial that shares it: {time.perf_counter() - t0:.0f}s")
    setup = TrialSetup(base=to_dict(params), shard_dir=str(shard_dir), epochs=epochs,
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
