"""experiments/index.yaml: every preset resolved, and the runs DVC makes of them.

DVC cannot read a folder of presets, follow `extends:` or loop over a list that differs
per preset, so this file spells out what experiments/dvc.yaml loops over:

    presets:
      vae: {description, kind, likelihood, chain, seeds, overrides}  # overrides: resolved
    runs:
      vae-0: {preset: vae, seed: 0}                                  # one per preset seed

Each run stage depends on its preset's resolved overrides here (`params:`), so editing a
preset, or one it extends, makes exactly the runs built on it stale. It is generated:
`python -m pipeline.experiments.index` writes it after a preset changes; a stale file is
a one-line error for the experiment stages and fails the tests.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipeline.core.errors import ConfigError
from pipeline.core.io import write_text
from pipeline.experiments.presets import PRESETS_DIR, load_preset, preset_names
from pipeline.experiments.runs import run_params
from pipeline.params import Params

INDEX = Path("experiments/index.yaml")
HEADER = ("# Generated from params/*.yaml by `python -m pipeline.experiments.index`; do not edit.\n"
          "# experiments/dvc.yaml runs every preset with seeds, once per seed (runs:).\n")


def build_index(presets_dir: Path = PRESETS_DIR) -> dict:
    """The index of every preset in `presets_dir`, each validated as a run."""
    presets, runs, files = {}, {}, {}  # files: each preset file read once, whoever extends it
    for name in preset_names(presets_dir):
        preset = load_preset(name, presets_dir, files)
        model = run_params(Params(), preset, 0).model  # validates the whole chain
        presets[name] = {"description": preset.description, "kind": model.kind,
                         "likelihood": model.likelihood.name, "chain": list(preset.chain),
                         "seeds": list(preset.seeds), "overrides": effective(preset.overrides, model.kind)}
        runs.update({f"{name}-{s}": {"preset": name, "seed": s} for s in preset.seeds})
    return {"presets": presets, "runs": runs}


def effective(overrides: dict, kind: str) -> dict:
    """The overrides a run of `kind` reads: without other kinds' model blocks (a VAE built
    on the main job's recipe ignores its manager), so editing those stales no run of it."""
    read = ("kind", "net", "likelihood", kind)
    return {k: v for k, v in overrides.items() if not k.startswith("model.") or k.split(".")[1] in read}


def render(index: dict) -> str:
    return HEADER + yaml.safe_dump(index, sort_keys=True, width=100, allow_unicode=True)


def read_index(path: Path = INDEX, presets_dir: Path = PRESETS_DIR) -> dict:
    """The committed index, checked against the presets it was made from."""
    if not Path(path).exists():
        raise ConfigError(f"{path} is missing; run `python -m pipeline.experiments.index`")
    if Path(path).read_text() != render(build_index(presets_dir)):
        raise ConfigError(f"{path} is out of date with {presets_dir}/; run "
                          f"`python -m pipeline.experiments.index` and commit both")
    return yaml.safe_load(Path(path).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description="write experiments/index.yaml from params/*.yaml")
    p.add_argument("--presets", default=str(PRESETS_DIR))
    p.add_argument("--out", default=str(INDEX))
    args = p.parse_args()
    try:
        index = build_index(Path(args.presets))
    except ConfigError as e:
        sys.exit(f"error: {e}")
    write_text(Path(args.out), render(index))
    print(f"wrote {args.out}: {len(index['presets'])} presets, {len(index['runs'])} runs")


if __name__ == "__main__":
    main()
