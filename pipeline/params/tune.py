"""The `tune` section of params.yaml: what a sweep searches and how, and the syntax of
tune.space (pipeline/sweep/space.py turns it into Ray Tune domains)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pipeline.core.errors import check
from pipeline.core.schema import param

# tune.metric -> the direction that is better. The label metrics are reported for every
# trial but select only when tune.metric names them (see docs/sweeps.md).
TUNE_METRICS = {"val_log_likelihood": "max", "val_mutual_info": "max", "val_loss": "min",
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


@dataclass(frozen=True)
class TuneConfig:
    space: Any = param(doc="{dotted model.*/train.* key: {loguniform|uniform: [lo, hi]} | "
                           "{choice|grid: [v, ...]}}; see docs/sweeps.md",
                       factory=lambda: {
                           "model.moe_vae.balancing_weight": {"loguniform": [0.01, 1.0]},
                           "model.net.latent_dim": {"choice": [8, 20]},
                           "model.moe_vae.experts": {"choice": [5, 10]}})
    search: str = param("random", "random (choice drawn, grid crossed) | grid (every choice crossed)")
    scheduler: str = param("asha", "asha (stop weak trials early on the per-epoch metric) | fifo")
    metric: str = param("val_log_likelihood", "label-free: val_log_likelihood | val_mutual_info "
                                              "(I(x;k)) | val_loss; cluster_accuracy | nmi select "
                                              "with labels (cheating)")
    num_samples: int = param(8, "random: trials drawn; grid: repeats of the whole grid")
    epochs: Optional[int] = param(5, "per-trial epoch budget (ASHA max_t); null = train.epochs")
    grace_period: int = param(1, "ASHA: epochs before a trial can be stopped")
    reduction_factor: int = param(2, "ASHA: keep the best 1/eta at each rung")
    max_concurrent_trials: int = param(2, "trials running at once")
    cpus_per_trial: float = param(1.0, "CPUs of one trial")
    gpus_per_trial: float = param(0.0, "GPUs of one trial; fractions share a GPU between trials")
    val_rows: int = param(5000, "last rows of the train split, held out from every trial's training")
    val_iw_samples: int = param(16, "importance samples per held-out image for val_log_likelihood")
    seed: int = param(0, "seeds the search (which configurations are drawn)")
    max_failures: int = param(0, "retries of a crashed trial from its last checkpoint")

    def __post_init__(self):
        check(isinstance(self.space, dict), "space", self.space,
              "use a mapping {section.key: {loguniform: [lo, hi]} | {choice: [...]}}")
        for key, spec in self.space.items():
            check_dim(key, spec, self.search)
        check(self.search in ("random", "grid"), "search", self.search, "choose 'random' or 'grid'")
        check(self.scheduler in ("asha", "fifo"), "scheduler", self.scheduler, "choose 'asha' or 'fifo'")
        check(self.metric in TUNE_METRICS, "metric", self.metric, f"choose one of {sorted(TUNE_METRICS)}")
        for name in ("num_samples", "grace_period", "max_concurrent_trials", "val_rows", "val_iw_samples"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "use an integer >= 1")
        check(self.epochs is None or self.epochs >= self.grace_period, "epochs", self.epochs,
              f"use null or an integer >= tune.grace_period={self.grace_period}")
        check(self.reduction_factor >= 2, "reduction_factor", self.reduction_factor, "use an integer >= 2")
        check(self.cpus_per_trial > 0, "cpus_per_trial", self.cpus_per_trial, "use a number > 0")
        check(self.gpus_per_trial >= 0 and (self.gpus_per_trial <= 1 or
                                            float(self.gpus_per_trial).is_integer()),
              "gpus_per_trial", self.gpus_per_trial,
              "use 0 (CPU), a fraction up to 1 (trials share a GPU) or a whole number")
        check(self.max_failures >= -1, "max_failures", self.max_failures,
              "use -1 (retry forever), 0 or a positive integer")
