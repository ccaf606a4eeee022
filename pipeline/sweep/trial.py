"""One sweep trial: a plain Tune function that trains one configuration, epoch by epoch.

Everything the trials share travels once, in `TrialSetup`, through Tune's
`with_parameters`: Ray puts it in the object store, and a node fetches it once for all
its trials. The training images are a (N, 784) uint8 array in it, which a trial reads in
place (zero copy) instead of reading and checksumming the Parquet shards again.

Objectives reported after every epoch, on the held-out rows (none of them reads labels):
- `val_log_likelihood`: importance-sampled log p(x), the same estimator as the test set's;
- `val_mutual_info`: I(x; k) of the cluster assignment, in nats (below);
- `val_loss`: the training loss (not comparable across balancing weights).
`cluster_accuracy` and `nmi` on the same rows are information only (docs/sweeps.md).
"""
from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from pipeline.core.schema import apply_overrides
from pipeline.evaluation.likelihood import iw_log_likelihood
from pipeline.evaluation.metrics import cluster_scores, mutual_information, prepare_test
from pipeline.models.registry import build_model, side_input, side_key
from pipeline.params import Params, params_from_dict
from pipeline.training.loop import (NonFiniteLossError, compiled, load_state, make_optimizer,
                                    save_state, set_deterministic, set_lr, train_epoch)

DIVERGED = "diverged"  # the key of a trial's last row when its loss went non-finite


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares; the swept values arrive as Tune's `config`."""
    base: dict  # to_dict(params) of the sweep's params
    pixels: np.ndarray  # (N_train, 784) uint8: the whole train split, read once by the driver
    labels: np.ndarray  # (N_train,) uint8: read by validate's information-only scores
    epochs: int
    val_rows: int  # rows [N_train - val_rows:] are held out from every trial's training
    val_iw_samples: int
    threads: int
    use_gpu: bool
    side_key: Optional[tuple] = None  # the base params' side input, made once for every
    side: Optional[torch.Tensor] = None  # trial whose side_key is the same (CPU, (n, ...))
    neighbours: Optional[torch.Tensor] = None  # the neighbours stage's (n, k), for the rest


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
           "val_mutual_info": float("nan"), "cluster_accuracy": float("nan"), "nmi": float("nan")}
    if probs:
        p = torch.cat(probs)  # (N, C)
        out["val_mutual_info"] = mutual_information(p)  # label-free: before labels are read
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
    """Tune function: train one configuration for `setup.epochs`, reporting each epoch.
    The first row after the process starts carries `setup_seconds`: from the call to the
    first training step (fetching the setup, building the model, the held-out batch)."""
    from ray import tune

    t_call = time.perf_counter()
    logging.getLogger("ray").setLevel(logging.WARNING)  # "Checkpoint created" per epoch
    params = trial_params(setup.base, config)
    tcfg = params.train
    torch.set_num_threads(setup.threads)
    set_deterministic(tcfg.deterministic)  # before any CUDA work
    device = torch.device("cuda" if setup.use_gpu and torch.cuda.is_available() else "cpu")
    n_train = len(setup.pixels) - setup.val_rows
    # (n_train, 784) uint8, zero copy from the object store on CPU; batches are drawn from it
    with warnings.catch_warnings():  # read-only: the object store's; nothing writes to it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(setup.pixels[:n_train]).to(device)
    steps = n_train // tcfg.batch_size

    torch.manual_seed(tcfg.seed)
    model = build_model(params.model).to(device)
    opt = make_optimizer(model, tcfg.lr)
    step = compiled(model, tcfg.compile)
    x_val = prepare_test(model, setup.pixels[n_train:], params.evaluate.seed).to(device)
    side = trial_side(params, setup, pixels)  # e.g. each image's VAT radius (knn), label-free
    labels_val = setup.labels[n_train:]
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt:  # a resumed sweep continues this trial after its last finished epoch
        start = load_state(ckpt, model, opt, device)["epoch"]
    setup_seconds = time.perf_counter() - t_call
    for epoch in range(start, setup.epochs):
        t0 = time.perf_counter()
        try:
            scale = model.batch_scale(epoch)  # > 1: a phase on larger batches (expert_batch_scale)
            b, n = tcfg.batch_size * scale, steps // scale  # this epoch's batch and steps
            if tcfg.lr_schedule != "constant":  # annealed over the trial's budget, as a run's
                set_lr(opt, tcfg.lr * tcfg.lr_factor(epoch, setup.epochs))
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
               "setup_seconds": setup_seconds if epoch == start else 0.0,
               "val_seconds": time.perf_counter() - t0 - seconds, "images_per_s": n * b / seconds}
        with tempfile.TemporaryDirectory() as d:
            save_state(d, model, opt, epoch + 1)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
