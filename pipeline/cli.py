"""Shared plumbing for the stage scripts: argument parsing and one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.config import ConfigError
from pipeline.data import DataError

EXPECTED = (ConfigError, DataError, FileNotFoundError)


def parser(description: str, variants: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if variants:
        p.add_argument("--kind", help="run this model kind with compare.overrides applied "
                                      "(the compare stages); default: params as they are")
        p.add_argument("--preset", help="run params/<PRESET>.yaml over params.yaml "
                                        "(the results stages; see pipeline/presets.py)")
        p.add_argument("--seed", type=int, default=0, help="train.seed of a --preset run")
    return p


def load(args: argparse.Namespace):
    """Validated Params for a stage: the compare variant with --kind, the preset run with
    --preset, else params.yaml as it is."""
    from pipeline.config import compare_variant, load_params

    params = load_params(args.params)
    if getattr(args, "kind", None) and getattr(args, "preset", None):
        raise ConfigError("pass --kind (compare stages) or --preset (results stages), not both")
    if getattr(args, "preset", None):
        from pipeline.presets import preset_variant

        return preset_variant(params, args.preset, args.seed)
    return compare_variant(params, args.kind) if getattr(args, "kind", None) else params


def log(msg: str) -> None:
    print(msg, flush=True)


def run(main: Callable[[], None]) -> None:
    """Run a stage; a known failure prints `error: <one line>` and exits 1, no traceback."""
    from pipeline.train import TrainError

    try:
        main()
    except (*EXPECTED, TrainError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; outputs are written atomically, so rerun the stage to continue",
              file=sys.stderr, flush=True)
        sys.exit(130)
