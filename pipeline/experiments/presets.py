"""Named recipes: params/<name>.yaml, each saying only what it changes against its base.

    # params/<name>.yaml
    description: one line for the table's "recipe" column
    extends: moe_imsat          # optional: another preset; absent: the code's defaults
    seeds: [0, 1, 2]            # train.seed of each run; [] or absent: a recipe not run
    overrides:                  # dotted keys of params.yaml, any depth
      model.moe_vae.top_k: 1
      train.epochs: 15

A preset resolves along its `extends` chain to one mapping of overrides on the code's
defaults (pipeline.params.Params()), never on params.yaml: editing the main job leaves
every preset as it was, and editing a preset changes exactly the presets that extend it.
Only the keys that say where and how a run executes, not what it computes, come from
params.yaml (RUN_KEYS: workers, GPU, threads, checkpoint storage), so one machine's
settings apply to every run. A run of preset P with seed S is that, plus train.seed = S,
validated like params.yaml itself (a typo is an error that names the file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.schema import apply_overrides, to_dict
from pipeline.params import Params, params_from_dict

PRESETS_DIR = Path("params")
FIELDS = ("description", "extends", "seeds", "overrides")
# Where and how a run executes (params.yaml's, for every run): not part of a recipe.
RUN_KEYS = ("train.num_workers", "train.use_gpu", "train.storage_path", "train.max_failures",
            "train.tensorboard", "train.threads", "train.portable_cpu", "train.deterministic",
            "train.compile", "evaluate.workers", "evaluate.use_gpu")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    seeds: Tuple[int, ...]
    chain: Tuple[str, ...]  # the presets it resolves through, its root first, itself last
    overrides: Dict[str, object]  # the chain's overrides merged, later files winning


def read_file(path: Path) -> dict:
    """The raw mapping of one preset file, its fields checked."""
    if not path.exists():
        raise ConfigError(f"preset {path} not found; create it or fix the name")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or set(raw) - set(FIELDS):
        raise ConfigError(f"{path}: use only the keys {', '.join(FIELDS)}; got "
                          f"{sorted(raw) if isinstance(raw, dict) else raw!r}")
    over = raw.get("overrides") or {}
    if not (isinstance(over, dict) and all(isinstance(k, str) and "." in k and all(k.split("."))
                                           for k in over)):
        raise ConfigError(f"{path}: overrides={over!r} is invalid; use a mapping of dotted "
                          f"'section.key' to value")
    seeds = raw.get("seeds") or []
    if not (isinstance(seeds, list) and len(set(seeds)) == len(seeds) and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"{path}: seeds={seeds!r} is invalid; use a list of distinct integers >= 0")
    extends = raw.get("extends")
    if extends is not None and not isinstance(extends, str):
        raise ConfigError(f"{path}: extends={extends!r} is invalid; name one preset (a file stem)")
    return {"description": str(raw.get("description") or path.stem), "extends": extends,
            "seeds": tuple(seeds), "overrides": over}


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> Preset:
    """Preset `name`, resolved along its `extends` chain."""
    chain: List[str] = []
    files: List[dict] = []
    current = name
    while current is not None:
        if current in chain:
            raise ConfigError(f"preset {name}: extends loops ({' -> '.join(chain + [current])}); "
                              f"break the cycle")
        chain.append(current)
        files.append(read_file(Path(presets_dir) / f"{current}.yaml"))
        current = files[-1]["extends"]
    merged: Dict[str, object] = {}
    for raw in reversed(files):  # the root first, so a derived preset wins
        for key, value in raw["overrides"].items():
            # a key replaces what its base said about it and below it
            merged = {k: v for k, v in merged.items() if k != key and not k.startswith(key + ".")}
            merged[key] = value
    return Preset(name=name, description=files[0]["description"], seeds=files[0]["seeds"],
                  chain=tuple(reversed(chain)), overrides=merged)


def preset_names(presets_dir: Path = PRESETS_DIR) -> List[str]:
    return sorted(p.stem for p in Path(presets_dir).glob("*.yaml"))


def run_params(params: Params, preset: Preset, seed: int) -> Params:
    """The params of run (preset, seed): the code's defaults, then params.yaml's RUN_KEYS
    (where and how runs execute), then the preset's overrides, then train.seed = seed."""
    here = to_dict(params)
    run_keys = {}
    for dotted in RUN_KEYS:
        section, key = dotted.split(".")
        run_keys[dotted] = here[section][key]
    try:
        return params_from_dict(apply_overrides(to_dict(Params()), {
            **run_keys, **preset.overrides, "train.seed": seed}))
    except ConfigError as e:
        files = " <- ".join(f"params/{n}.yaml" for n in reversed(preset.chain))
        raise ConfigError(f"preset {preset.name} ({files}): {str(e).removeprefix('params.yaml: ')}") from None
