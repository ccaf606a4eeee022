"""params.yaml as one typed tree, loaded strictly.

    data        pipeline.data.config.DataConfig
    neighbours  pipeline.data.neighbours.NeighboursConfig (the cached nearest-neighbour distances)
    model       pipeline.models.registry.ModelConfig (kind, net, likelihood, one block per kind)
    train       pipeline.params.train.TrainConfig
    evaluate    pipeline.evaluation.config.EvaluateConfig
    tune        pipeline.params.tune.TuneConfig

The sections of the packages the stages run on top of (training, sweep) live in this
package, so the arrows of the import graph all point down: training, sweep and
experiments import params, and params imports none of them. Presets (params/<name>.yaml)
are built on these same dataclasses in pipeline/experiments/presets.py.

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
from pipeline.data.neighbours import NeighboursConfig
from pipeline.evaluation.config import EvaluateConfig
from pipeline.models.registry import KINDS, ModelConfig
from pipeline.params.tune import TuneConfig
from pipeline.params.train import TrainConfig


@dataclass(frozen=True)
class Params:
    data: DataConfig = param(factory=DataConfig, doc="the prepare stage")
    neighbours: NeighboursConfig = param(factory=NeighboursConfig, doc="the neighbours stage")
    model: ModelConfig = param(factory=ModelConfig, doc="what the train stage builds")
    train: TrainConfig = param(factory=TrainConfig, doc="the train stage")
    evaluate: EvaluateConfig = param(factory=EvaluateConfig, doc="the evaluate stage")
    tune: TuneConfig = param(factory=TuneConfig, doc="sweep/dvc.yaml")

    def __post_init__(self):
        check(self.train.restarts == 1 or KINDS[self.model.kind].model.has_clusters, "train.restarts",
              self.train.restarts, f"restarts are scored on clusters, which model.kind="
                                   f"{self.model.kind} has not; use 1")


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


def with_overrides(params: Params, overrides: Dict[str, Any]) -> Params:
    """params with dotted overrides applied, validated again."""
    return params_from_dict(apply_overrides(to_dict(params), overrides))


def active_model(params: Params) -> Dict[str, Any]:
    """The `model` section as a run of the active kind reads it: kind, net, likelihood and
    that kind's block alone, defaults filled in. dvc.yaml's model_params stage writes it
    for the train stage to depend on (a DVC params entry cannot name the active block
    and survive a typo in model.kind: docs/pipeline.md, "Adding a model kind")."""
    section = to_dict(params.model, compact=True)
    return {key: section[key] for key in ("kind", "net", "likelihood", params.model.kind)}
