"""Shared plumbing for the stage scripts: argument parsing, params and one-line errors."""
from __future__ import annotations

import argparse
import signal
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
    from pipeline.experiments.presets import load_preset
    from pipeline.experiments.runs import run_params

    read_index()  # the stage's params: must say what the preset files say
    return run_params(params, load_preset(args.preset), args.seed)


def log(msg: str) -> None:
    print(msg, flush=True)


# The signal that stopped the stage: SIGTERM (schedulers, containers, `timeout`, `kill`)
# takes Ctrl-C's path, so it says what a rerun resumes from; the exit status is the shell's
# 128 + signal number (130 for SIGINT, 143 for SIGTERM).
_stopped_by = {"signal": signal.SIGINT}


def _terminate(signum, frame) -> None:
    """SIGTERM: whatever Ctrl-C does now (Ray Tune's graceful stop while a sweep runs)."""
    _stopped_by["signal"] = signum
    on_ctrl_c = signal.getsignal(signal.SIGINT)
    if callable(on_ctrl_c) and on_ctrl_c is not signal.default_int_handler:
        on_ctrl_c(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def run(main: Callable[[], None]) -> None:
    """Run a stage; a known failure prints `error: <one line>` and exits 1, no traceback;
    Ctrl-C or SIGTERM print what a rerun resumes from and exit 128 + the signal."""
    signal.signal(signal.SIGTERM, _terminate)  # pipeline.core.ray_env keeps it past ray.init
    try:
        main()
    except Interrupted as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(128 + _stopped_by["signal"])
    except (PipelineError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; outputs are written atomically, so rerun the stage to continue",
              file=sys.stderr, flush=True)
        sys.exit(128 + _stopped_by["signal"])
