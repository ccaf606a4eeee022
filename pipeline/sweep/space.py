"""tune.space: validation of the YAML syntax and its translation to Ray Tune domains.

    tune:
      space:
        model.moe_vae.balancing_weight: {loguniform: [0.01, 1.0]}  # log-uniform on [lo, hi]
        train.lr: {uniform: [0.0005, 0.002]}                       # uniform on [lo, hi]
        model.net.latent_dim: {choice: [8, 20]}                     # one drawn per trial (random)
        model.moe_vae.experts: {grid: [5, 10]}                      # every value, crossed

Any `model.*` / `train.*` key is applied to the trial's params exactly like
`load_params(overrides={key: value})`, so keys added to those sections later (a new
kind's block) are sweepable with no change here. Whether each value builds valid params
is checked once, before the sweep (pipeline.params.check_space).
"""
from __future__ import annotations

from typing import Any, Dict

from pipeline.core.errors import check

# tune.metric -> the direction that is better. The label metrics are reported for every
# trial but select only when tune.metric names them (see docs/sweeps.md).
TUNE_METRICS = {"val_log_likelihood": "max", "val_loss": "min",
                "cluster_accuracy": "max", "nmi": "max"}
LABEL_METRICS = ("cluster_accuracy", "nmi")
SPACE_KINDS = ("loguniform", "uniform", "choice", "grid")
# Keys a trial ignores or that the sweep owns (tune.epochs is the per-trial budget).
UNSWEEPABLE = ("train.epochs", "train.num_workers", "train.use_gpu", "train.storage_path",
               "train.max_failures", "train.tensorboard", "train.restarts", "train.restart_epochs",
               "model.kind")


def check_dim(key: Any, spec: Any, search: str) -> None:
    """Syntax of one tune.space entry; check_space then tries its values on real Params."""
    where = f"space.{key}"  # relative: TuneConfig is built under "tune"
    check(isinstance(key, str) and "." in key and all(key.split(".")), "space", key,
          "keys are dotted params such as model.net.latent_dim")
    check(key.split(".")[0] in ("model", "train"), "space", key,
          "only model.* and train.* keys change what a trial trains")
    check(key not in UNSWEEPABLE, "space", key,
          "a trial ignores it or the sweep sets it (use tune.epochs for the epoch budget)")
    ok = isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPACE_KINDS
    check(ok, where, spec, f"use one of {list(SPACE_KINDS)}, e.g. {{choice: [8, 20]}}")
    kind, values = next(iter(spec.items()))
    check(isinstance(values, list) and len(values) >= 1, where, spec, "give a non-empty list")
    if kind in ("loguniform", "uniform"):
        check(len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in values) and values[0] < values[1],
              where, spec, f"{kind} needs [low, high] numbers with low < high")
        check(kind == "uniform" or values[0] > 0, where, spec, "loguniform needs low > 0")
        check(search != "grid", where, spec,
              "tune.search=grid crosses lists only; use choice/grid here or tune.search=random")


def param_space(space: Dict[str, dict], search: str) -> Dict[str, Any]:
    """tune.space -> Tune's param_space: flat {"model.net.latent_dim": <Domain>, ...}."""
    from ray import tune

    out: Dict[str, Any] = {}
    for key, spec in space.items():
        kind, values = next(iter(spec.items()))
        if kind == "loguniform":
            out[key] = tune.loguniform(*values)
        elif kind == "uniform":
            out[key] = tune.uniform(*values)
        elif kind == "grid" or search == "grid":
            out[key] = tune.grid_search(list(values))
        else:
            out[key] = tune.choice(list(values))
    return out


def trial_count(space: Dict[str, dict], search: str, num_samples: int) -> int:
    """Trials Tune will create: num_samples x the product of the grid sizes."""
    n = num_samples
    for spec in space.values():
        kind, values = next(iter(spec.items()))
        if kind == "grid" or (search == "grid" and kind == "choice"):
            n *= len(values)
    return n
