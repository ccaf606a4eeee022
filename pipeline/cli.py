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
    return p


def load(args: argparse.Namespace):
    """Validated Params for a stage, as the compare variant when --kind is given."""
    from pipeline.config import compare_variant, load_params

    params = load_params(args.params)
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
