"""Params sections that describe several runs: compare (kinds side by side), tune (a
sweep) and results (named presets over seeds, the README's results table)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from pipeline.checks import _check


def check_overrides(key: str, over: Any, forbidden: Sequence[str] = (), fix: str = "") -> dict:
    """A {'section.key': value} mapping (None = empty), or a ConfigError naming `key`."""
    over = {} if over is None else over
    _check(isinstance(over, dict) and all(isinstance(k, str) and k.count(".") == 1 for k in over)
           and not set(over) & set(forbidden), key, over,
           "use a mapping of 'section.key' to value" + (f" ({fix})" if fix else ""))
    return dict(over)


@dataclass(frozen=True)
class CompareConfig:
    kinds: Any = ("moe_vae", "vae", "mmd_vae", "gmm_vae")  # model kinds the compare stages run
    overrides: Any = None  # {dotted.key: value} applied to every compared run (e.g. fewer epochs)

    def __post_init__(self):
        from pipeline.models import REGISTRY

        kinds = self.kinds
        _check(isinstance(kinds, (list, tuple)) and len(kinds) > 0 and len(set(kinds)) == len(kinds)
               and all(k in REGISTRY for k in kinds), "compare.kinds", kinds,
               f"use a non-empty list of distinct kinds from {sorted(REGISTRY)}")
        object.__setattr__(self, "kinds", tuple(kinds))
        object.__setattr__(self, "overrides", check_overrides(
            "compare.overrides", self.overrides, forbidden=("model.kind",),
            fix="model.kind comes from compare.kinds"))


@dataclass(frozen=True)
class TuneConfig:
    # {"section.key": {loguniform|uniform: [lo, hi]} | {choice|grid: [v, ...]}}; any
    # model.* or train.* key, applied to params.yaml like load_params(overrides=...).
    space: Any = field(default_factory=lambda: {
        "model.balancing_weight": {"loguniform": [0.01, 1.0]},
        "model.latent_dim": {"choice": [8, 20]},
        "model.experts": {"choice": [5, 10]}})
    search: str = "random"  # random (choice sampled, grid crossed) | grid (every choice crossed)
    scheduler: str = "asha"  # asha (early stopping on the per-epoch metric) | fifo
    metric: str = "val_log_likelihood"  # selection and ASHA metric; see TUNE_METRICS
    num_samples: int = 8  # random: trials drawn; grid: repeats of the whole grid
    epochs: Optional[int] = 5  # per-trial epoch budget (ASHA max_t); null = train.epochs
    grace_period: int = 1  # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2  # ASHA: keep the best 1/eta at each rung
    max_concurrent_trials: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractions share a GPU between trials
    val_rows: int = 5000  # last rows of the train split, held out from every trial's training
    val_iw_samples: int = 16  # importance samples per held-out image for val_log_likelihood
    seed: int = 0  # seeds the search (which configurations are drawn)
    max_failures: int = 0  # retries of a crashed trial (from its last checkpoint)

    def __post_init__(self):
        from pipeline.tune_space import TUNE_METRICS, check_dim  # late: it imports this module

        _check(isinstance(self.space, dict), "tune.space", self.space,
               "use a mapping {section.key: {loguniform: [lo, hi]} | {choice: [...]}}")
        for key, spec in self.space.items():
            check_dim(key, spec, self.search)
        _check(self.search in ("random", "grid"), "tune.search", self.search,
               "choose 'random' or 'grid'")
        _check(self.scheduler in ("asha", "fifo"), "tune.scheduler", self.scheduler,
               "choose 'asha' or 'fifo'")
        _check(self.metric in TUNE_METRICS, "tune.metric", self.metric,
               f"choose one of {sorted(TUNE_METRICS)}")
        for name in ("num_samples", "grace_period", "max_concurrent_trials", "val_rows",
                     "val_iw_samples"):
            _check(getattr(self, name) >= 1, f"tune.{name}", getattr(self, name),
                   "use an integer >= 1")
        _check(self.epochs is None or self.epochs >= self.grace_period, "tune.epochs",
               self.epochs, f"use null or an integer >= tune.grace_period={self.grace_period}")
        _check(self.reduction_factor >= 2, "tune.reduction_factor", self.reduction_factor,
               "use an integer >= 2")
        _check(self.cpus_per_trial > 0, "tune.cpus_per_trial", self.cpus_per_trial,
               "use a number > 0")
        _check(self.gpus_per_trial >= 0 and (self.gpus_per_trial <= 1 or
                                             float(self.gpus_per_trial).is_integer()),
               "tune.gpus_per_trial", self.gpus_per_trial,
               "use 0 (CPU), a fraction up to 1 (trials share a GPU) or a whole number")
        _check(self.max_failures >= -1, "tune.max_failures", self.max_failures,
               "use -1 (retry forever), 0 or a positive integer")


PRESET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ResultsConfig:
    presets: Any = ("moe_imsat", "gmm_vae", "moe_seed")  # names of params/<name>.yaml (results/dvc.yaml)
    seeds: Any = (0, 1, 2)  # train.seed of each run; the table shows mean +- std over them
    overrides: Any = None  # {section.key: value} applied after every preset (e.g. smoke runs)
    presets_dir: str = "params"  # where the preset files live

    def __post_init__(self):
        p, s = self.presets, self.seeds
        _check(isinstance(p, (list, tuple)) and len(p) > 0 and len(set(p)) == len(p) and all(
            isinstance(n, str) and PRESET_NAME.match(n) for n in p), "results.presets", p,
            "use a non-empty list of distinct preset names (files params/<name>.yaml)")
        _check(isinstance(s, (list, tuple)) and len(s) > 0 and len(set(s)) == len(s) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in s),
            "results.seeds", s, "use a non-empty list of distinct integers >= 0")
        object.__setattr__(self, "presets", tuple(p))
        object.__setattr__(self, "seeds", tuple(s))
        object.__setattr__(self, "overrides", check_overrides("results.overrides", self.overrides))
