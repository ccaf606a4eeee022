"""Console progress of a sweep: one line per trial event, with the best so far.

Imports Ray at module level, so import it only after `init_ray` (Ray reads its
environment on first import). The callback is pickled into the sweep's state, so it is a
module-level class and `log` must be picklable (a module-level function such as
`pipeline.cli.log`; not a lambda, nor the builtin print, which Ray may replace mid-session).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from ray import tune


def last_line(text) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def short(trial) -> str:
    return trial.trial_id.rsplit("_", 1)[-1]  # "a1b2c_00003" -> "00003"


def fmt(config: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in sorted(config.items()))


class Progress(tune.Callback):
    """Replaces Tune's tables (the run uses verbose=0)."""

    def __init__(self, total: int, max_t: int, metric: str, mode: str,
                 log: Callable[[str], None]):
        self.total, self.max_t, self.metric, self.mode, self.log = total, max_t, metric, mode, log
        self.best: Optional[tuple] = None  # (final metric, trial)

    def _better(self, v: float) -> bool:
        return self.best is None or (v > self.best[0] if self.mode == "max" else v < self.best[0])

    def on_trial_start(self, iteration, trials, trial, **info):
        running = sum(t.status == "RUNNING" for t in trials)
        self.log(f"tune: trial {short(trial)} started ({running} running, {self.total} in the "
                 f"sweep): {fmt(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if isinstance(result.get("diverged"), str):  # run.py: the trial's loss went non-finite
            self.log(f"tune: trial {short(trial)} FAILED ({fmt(trial.config)}): {result['diverged']}; "
                     f"not retried, the sweep goes on")
            return
        self.log(f"tune: trial {short(trial)} epoch {result['epoch']}/{self.max_t}  {self.metric} "
                 f"{result[self.metric]:.4g}  ({result['seconds']:.0f}s)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if isinstance(last.get("diverged"), str):
            return  # said in on_trial_result
        value, epochs = last.get(self.metric, float("nan")), last.get("epoch", 0)
        how = "finished" if epochs >= self.max_t else f"stopped early at epoch {epochs}"
        if value == value and self._better(value):
            self.best = (value, short(trial))
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial) + 1
        best = f"{self.best[0]:.4g} (trial {self.best[1]})" if self.best else "none"
        self.log(f"tune: trial {short(trial)} {how}: {self.metric} {value:.4g}; "
                 f"{done}/{self.total} ended, best {best}")

    def on_trial_error(self, iteration, trials, trial, **info):
        where = f" (traceback: {trial.error_file})" if trial.error_file else ""
        error = trial.get_error()  # None in some Ray versions: the error file has it
        if error is None and trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                error = f.read()
        self.log(f"tune: trial {short(trial)} FAILED ({fmt(trial.config)}): "
                 f"{last_line(error)}; the sweep goes on{where}")
