"""The one error type of bad params, and the check that raises it with a fix."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad value in params.yaml; the message is meant to be shown as-is."""


def _check(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"params.yaml: {key}={value!r} is invalid; {fix}")
