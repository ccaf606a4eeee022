"""Shared plumbing for the stage scripts: argument parsing, params and one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.core.errors import Interrupted, PipelineError
from pipeline.params import Params, load_params, variant


def parser(description: str, variants: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if variants:
        p.add_argument("--set", choices=("compare", "results"),
                       help="the experiment set of a --preset run (compare/ or results/dvc.yaml)")
        p.add_argument("--preset", help="run params/<PRESET>.yaml over params.yaml plus the set's "
                                        "overrides (see pipeline/experiments/presets.py)")
        p.add_argument("--seed", type=int, default=0, help="train.seed of a --preset run")
    return p


def load(args: argparse.Namespace) -> Params:
    """Validated Params for a stage: one run of an experiment set with --set/--preset,
    else params.yaml as it is."""
    params = load_params(args.params)
    if not hasattr(args, "preset"):  # a stage without variants
        return params
    preset, set_name = args.preset, args.set
    if bool(preset) != bool(set_name):
        raise PipelineError("pass --set and --preset together (the experiment stages), or neither")
    return variant(params, set_name, preset, args.seed) if preset else params


def log(msg: str) -> None:
    print(msg, flush=True)


def run(main: Callable[[], None]) -> None:
    """Run a stage; a known failure prints `error: <one line>` and exits 1, no traceback."""
    try:
        main()
    except Interrupted as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(130)
    except (PipelineError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; outputs are written atomically, so rerun the stage to continue",
              file=sys.stderr, flush=True)
        sys.exit(130)
