"""Named param sets: the recipes behind the README's results table.

    # params/<name>.yaml
    description: one line for the table's "recipe" column
    overrides:                      # dotted keys, like compare.overrides
      model.manager_hidden: [1200, 1200]
      train.epochs: 30

A run of preset P with seed S uses params.yaml + P's overrides + results.overrides +
train.seed = S, validated like params.yaml itself (a typo is an error).
`dvc repro results/dvc.yaml` trains and evaluates every preset in results.presets for
every seed in results.seeds and writes results/table.md (also into README.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import yaml

from pipeline.config import ConfigError, Params, apply_overrides, params_from_dict, to_dict
from pipeline.config_runs import check_overrides


def preset_path(params: Params, name: str) -> Path:
    return Path(params.results.presets_dir) / f"{name}.yaml"


def load_preset(path: Path) -> Tuple[str, dict]:
    """(description, {dotted.key: value}) of a preset file."""
    if not path.exists():
        raise ConfigError(f"preset {path} not found; create it or fix results.presets")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or set(raw) - {"description", "overrides"}:
        raise ConfigError(f"{path}: use only the keys 'description' and 'overrides', got "
                          f"{sorted(raw) if isinstance(raw, dict) else raw!r}")
    description = raw.get("description") or path.stem
    return str(description), check_overrides(f"{path}: overrides", raw.get("overrides"))


def preset_variant(params: Params, name: str, seed: int) -> Params:
    """The params of one results run: preset `name` with train.seed = seed."""
    _, over = load_preset(preset_path(params, name))
    raw = apply_overrides(to_dict(params), over)
    raw = apply_overrides(raw, {**params.results.overrides, "train.seed": seed})
    try:
        return params_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"preset {name}: {e}") from None
