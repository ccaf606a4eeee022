"""params.yaml as one typed tree: the sections of every subpackage, loaded strictly.

    data      pipeline.data.config.DataConfig
    model     pipeline.models.registry.ModelConfig (kind, net, likelihood, one block per kind)
    train     pipeline.training.config.TrainConfig
    evaluate  pipeline.evaluation.config.EvaluateConfig
    tune      pipeline.sweep.config.TuneConfig
    compare, results   pipeline.experiments.config.ExperimentsConfig (presets x seeds)

Unknown keys and out-of-range values are a one-line ConfigError naming the dotted key and
the fix. pipeline/paramdoc.py writes the parameter reference from the fields' own
descriptions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

from pipeline.core.errors import ConfigError, check
from pipeline.core.schema import apply_overrides, build, param, to_dict
from pipeline.data.config import DataConfig
from pipeline.evaluation.config import EvaluateConfig
from pipeline.experiments.config import SETS, ExperimentsConfig
from pipeline.experiments.presets import load_preset
from pipeline.models.registry import KINDS, ModelConfig
from pipeline.sweep.config import TuneConfig
from pipeline.training.config import TrainConfig


@dataclass(frozen=True)
class Params:
    data: DataConfig = param(factory=DataConfig, doc="the prepare stage")
    model: ModelConfig = param(factory=ModelConfig, doc="what the train stage builds")
    train: TrainConfig = param(factory=TrainConfig, doc="the train stage")
    evaluate: EvaluateConfig = param(factory=EvaluateConfig, doc="the evaluate stage")
    tune: TuneConfig = param(factory=TuneConfig, doc="sweep/dvc.yaml")
    compare: ExperimentsConfig = param(doc="compare/dvc.yaml: every kind side by side", factory=lambda: (
        ExperimentsConfig(presets=("moe_imsat", "vae", "mmd_vae", "gmm_vae"), seeds=(0,))))
    results: ExperimentsConfig = param(factory=ExperimentsConfig, doc="results/dvc.yaml: the results table")

    def __post_init__(self):
        check(self.train.restarts == 1 or KINDS[self.model.kind].model.has_clusters, "train.restarts",
              self.train.restarts, f"restarts are scored on clusters, which model.kind="
                                   f"{self.model.kind} has not; use 1")
        if self.tune.space:
            check_space(self)


def params_from_dict(raw: dict) -> Params:
    return build(Params, raw, "")


def load_params(path: Union[str, Path] = "params.yaml", overrides: Optional[dict] = None) -> Params:
    """Read and validate params.yaml; `overrides` maps dotted keys to values."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', None) or e}); "
                          f"fix the syntax there") from None
    return params_from_dict(apply_overrides(raw, overrides or {}))


def check_space(params: Params) -> None:
    """Build Params once per listed value of tune.space (both bounds of a range), so an
    unknown key or a value its section rejects fails at config time, not in a trial."""
    base = to_dict(params)
    base["tune"]["space"] = {}  # the builds below must not re-check the space
    for key, spec in params.tune.space.items():
        kind, values = next(iter(spec.items()))
        # Ranges draw floats: try them as floats so an int key gets "use choice" now.
        for value in ([float(v) for v in values] if kind in ("loguniform", "uniform") else values):
            try:
                params_from_dict(apply_overrides(base, {key: value}))
            except ConfigError as e:
                hint = "; ranges draw floats, use choice for integers" if "wrong type" in str(e) else ""
                raise ConfigError(f"params.yaml: tune.space.{key} value {value!r} is rejected: "
                                  f"{str(e).removeprefix('params.yaml: ')}{hint}") from None


def with_overrides(params: Params, overrides: Dict[str, Any]) -> Params:
    """params with dotted overrides applied, validated again."""
    return params_from_dict(apply_overrides(to_dict(params), overrides))


def variant(params: Params, set_name: str, preset: str, seed: int) -> Params:
    """The params of one run of an experiment set (`compare` or `results`): preset
    `preset`, then the set's overrides, then train.seed = seed."""
    check(set_name in SETS, "--set", set_name, f"use one of {list(SETS)}")
    cfg: ExperimentsConfig = getattr(params, set_name)
    if preset not in cfg.presets:
        raise ConfigError(f"--preset {preset!r} is not in {set_name}.presets={list(cfg.presets)}; add it there")
    _, over = load_preset(Path(cfg.presets_dir) / f"{preset}.yaml")
    try:
        return with_overrides(params, {**over, **cfg.overrides, "train.seed": seed})
    except ConfigError as e:
        raise ConfigError(f"preset {preset}: {e}") from None
