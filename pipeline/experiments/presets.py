"""Named param sets: the recipes behind the comparison and the results table.

    # params/<name>.yaml
    description: one line for the table's "recipe" column
    overrides:                      # dotted keys of params.yaml, any depth
      model.moe_vae.manager.hidden: [1200, 1200]
      train.epochs: 30

A run of preset P with seed S in experiment set E (`compare` or `results`) uses
params.yaml + P's overrides + E.overrides + train.seed = S, validated like params.yaml
itself (a typo is an error). `dvc repro E/dvc.yaml` runs every preset of E.presets for
every seed of E.seeds and writes E/table.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import yaml

from pipeline.core.errors import ConfigError
from pipeline.experiments.config import check_overrides


def load_preset(path: Path) -> Tuple[str, dict]:
    """(description, {dotted.key: value}) of a preset file."""
    if not path.exists():
        raise ConfigError(f"preset {path} not found; create it or fix the presets list")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or set(raw) - {"description", "overrides"}:
        raise ConfigError(f"{path}: use only the keys 'description' and 'overrides', got "
                          f"{sorted(raw) if isinstance(raw, dict) else raw!r}")
    description = raw.get("description") or path.stem
    try:
        return str(description), check_overrides("overrides", raw.get("overrides"))
    except ConfigError as e:
        raise ConfigError(f"{path}: {str(e).removeprefix('params.yaml: ')}") from None
