"""The project's error types. Every message is one line, meant to be shown as it is."""
from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """A failure a stage script prints as `error: <message>` and exit 1, with no traceback."""


class ConfigError(PipelineError, ValueError):
    """A bad value in params.yaml (or a preset); the message names the key and the fix."""


class FieldError(ConfigError):
    """A bad value of one field, named relative to its dataclass; `build` prefixes the
    section path (`top_k` -> `model.moe_vae.top_k`) as it goes up the nesting."""

    def __init__(self, key: str, value: Any, fix: str):
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"params.yaml: {key}={value!r} is invalid; {fix}")

    def at(self, prefix: str) -> "FieldError":
        return FieldError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.fix)


class DataError(PipelineError, ValueError):
    """Missing or corrupt data; the message names the file and the fix."""


class TrainError(PipelineError, RuntimeError):
    """A failed training run or sweep, with a one-line reason."""


class Interrupted(PipelineError):
    """Ctrl-C (SIGINT) during a stage; the message says what a rerun resumes from. Stage
    scripts exit 130, the shell's code for it."""


def check(ok: bool, key: str, value: Any, fix: str) -> None:
    """Raise FieldError(key, value, fix) unless `ok`."""
    if not ok:
        raise FieldError(key, value, fix)


def positive_int(value: Any) -> bool:
    """An int >= 1 that is not a bool (YAML's `true` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
