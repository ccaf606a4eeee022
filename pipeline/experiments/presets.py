"""Named recipes: params/<name>.yaml, each saying only what it changes against its bases.

    # params/<name>.yaml
    description: one line for the table's "recipe" column
    extends: moe_imsat          # optional: another preset, or a list of them; absent: the code's defaults
    seeds: [0, 1, 2]            # train.seed of each run; [] or absent: a recipe not run
    overrides:                  # dotted keys of params.yaml, any depth
      model.moe_vae.top_k: 1
      train.epochs: 15

A preset resolves along its `extends` chain to one mapping of overrides on the code's
defaults (pipeline.params.Params()), never on params.yaml: editing the main job leaves
every preset as it was, and editing a preset changes exactly the presets that extend it.
With several bases (`extends: [a, b]`) the chain lists every preset reached, each after
its own bases (a before b where neither is a base of the other), and each preset's own
overrides apply once, in that order: b's win over a's, and the file's own over both. A
fragment such as params/manager_warps.yaml (a few keys, no seeds) is how two recipes
share a change without copying it. runs.py makes a run of the result.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from pipeline.core.errors import ConfigError

PRESETS_DIR = Path("params")
FIELDS = ("description", "extends", "seeds", "overrides")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    seeds: Tuple[int, ...]
    chain: Tuple[str, ...]  # the presets it resolves through, each after its bases, itself last
    overrides: Dict[str, object]  # the chain's own overrides applied in order, later ones winning


def read_file(path: Path) -> dict:
    """The raw mapping of one preset file, its fields checked; `extends` as a tuple."""
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
    if not (isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                            for s in seeds) and len(set(seeds)) == len(seeds)):
        raise ConfigError(f"{path}: seeds={seeds!r} is invalid; use a list of distinct integers >= 0")
    extends = raw.get("extends")
    bases = [extends] if isinstance(extends, str) else extends
    if extends is not None and not (isinstance(bases, list) and bases and all(
            isinstance(b, str) and b for b in bases) and len(set(bases)) == len(bases)):
        raise ConfigError(f"{path}: extends={extends!r} is invalid; name one preset (a file stem) "
                          f"or a list of distinct ones")
    return {"description": str(raw.get("description") or path.stem), "extends": tuple(bases or ()),
            "seeds": tuple(seeds), "overrides": over}


def resolve(bases: Sequence[str], presets_dir: Path = PRESETS_DIR) -> Tuple[Tuple[str, ...], Dict[str, object]]:
    """(chain, overrides) of a preset that extends `bases` and says nothing itself."""
    return _resolve(bases, presets_dir, {})


def _resolve(bases: Sequence[str], presets_dir: Path,
             files: Dict[str, dict]) -> Tuple[Tuple[str, ...], Dict[str, object]]:
    """(chain, overrides), reading each file along the chain once into `files` (name -> its
    read_file mapping), which a caller resolving many presets shares between them."""
    chain: List[str] = []

    def visit(name: str, path: List[str]) -> None:  # depth first: a preset after its bases
        if name in path:
            raise ConfigError(f"preset {path[0]}: extends loops ({' -> '.join(path + [name])}); "
                              f"break the cycle")
        if name in chain:
            return
        if name not in files:
            files[name] = read_file(Path(presets_dir) / f"{name}.yaml")
        for base in files[name]["extends"]:
            visit(base, path + [name])
        chain.append(name)

    for base in bases:
        visit(base, [])
    merged: Dict[str, object] = {}
    for name in chain:
        for key, value in files[name]["overrides"].items():
            # a key replaces what the presets before it said about it and below it
            merged = {k: v for k, v in merged.items() if k != key and not k.startswith(key + ".")}
            merged[key] = copy.deepcopy(value)  # its own: `files` may serve other presets
    return tuple(chain), merged


def load_preset(name: str, presets_dir: Path = PRESETS_DIR,
                files: Optional[Dict[str, dict]] = None) -> Preset:
    """Preset `name`, resolved along its `extends` chain. `files`: the files already read
    (see _resolve); pass one dict to every call that resolves the same folder."""
    files = {} if files is None else files
    chain, overrides = _resolve([name], presets_dir, files)
    own = files[name]
    return Preset(name=name, description=own["description"], seeds=own["seeds"], chain=chain,
                  overrides=overrides)


def preset_names(presets_dir: Path = PRESETS_DIR) -> List[str]:
    return sorted(p.stem for p in Path(presets_dir).glob("*.yaml"))
