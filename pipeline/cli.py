"""Shared plumbing for the stage scripts: argument parsing, params and one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from pipeline.core.errors import Interrupted, PipelineError
from pipeline.params import Params, load_params


def parser(description: str, variants: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if variants:
        p.add_argument("--preset", help="run params/<PRESET>.yaml (on the code's defaults; see "
                                        "pipeline/experiments/presets.py) instead of params.yaml")
        p.add_argument("--seed", type=int, default=0, help="train.seed of a --preset run")
    return p


def load(args: argparse.Namespace) -> Params:
    """Validated Params for a stage: one run of a preset with --preset (checked against
    experiments/index.yaml, which the experiment stages depend on), else params.yaml."""
    params = load_params(args.params)
    if not getattr(args, "preset", None):
        return params
    from pipeline.experiments.index import read_index
    from pipeline.experiments.presets import load_preset, run_params

    read_index()  # the stage's params: must say what the preset files say
    return run_params(params, load_preset(args.preset), args.seed)


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
