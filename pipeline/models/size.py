"""How big a model may be: upper bounds on the size params, and the memory a model's
parameters need, counted on the meta device before anything is allocated.

A config class lists its size params and their bounds in `SIZE_LIMITS` and calls
`check_sizes(self)`; a typo such as latent_dim: 1000000 is then a one-line error naming
the key, not a worker that grows past the machine's memory. In-bounds sizes can still
multiply into too much (experts x hidden x 784): `check_memory` counts the parameters of
the model built on the meta device (shapes only) and refuses what cannot fit.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Optional, Tuple

import torch
import torch.nn as nn

from pipeline.core.errors import ConfigError, check, positive_int

# fp32 weights (4 bytes) + their gradients (4) + Adam's two moments (8): what training
# holds per parameter before any activation.
TRAIN_BYTES_PER_PARAM = 16


def check_sizes(cfg: Any) -> None:
    """Every key of type(cfg).SIZE_LIMITS is an integer from 1 to its bound (a list: each
    of its items; None: not set, nothing to check)."""
    for key, limit in type(cfg).SIZE_LIMITS.items():
        value = getattr(cfg, key)
        if value is None:
            continue
        many = isinstance(value, (list, tuple))
        check(all(positive_int(v) and v <= limit for v in (value if many else [value])), key,
              list(value) if many else value,
              f"use {'integers' if many else 'an integer'} >= 1, at most {limit}")


def size_params(cfg: Any, prefix: str) -> Iterator[Tuple[str, Any, int]]:
    """(dotted key, value, bound) of every size param raised from its default in the
    dataclass tree `cfg`."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for key, limit in getattr(type(cfg), "SIZE_LIMITS", {}).items():
        if getattr(cfg, key) is not None and getattr(cfg, key) != defaults[key]:
            yield f"{prefix}.{key}", getattr(cfg, key), limit
    for f in dataclasses.fields(cfg):
        if dataclasses.is_dataclass(getattr(cfg, f.name)):
            yield from size_params(getattr(cfg, f.name), f"{prefix}.{f.name}")


def on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """build() on the meta device: every tensor has its shape and no storage (no memory,
    no random numbers drawn)."""
    with torch.device("meta"):
        return build()


def machine_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(cfg: Any, model: nn.Module, memory: Optional[int] = None) -> None:
    """Refuse the `model` section `cfg` when training its model (`model`, built on the meta
    device) needs more than `memory` bytes (default: this machine's) for the weights,
    gradients and Adam's moments alone; name the sizes nearest their bounds."""
    memory = machine_memory() if memory is None else memory
    n = sum(p.numel() for p in model.parameters())
    need = n * TRAIN_BYTES_PER_PARAM + sum(b.numel() * b.element_size() for b in model.buffers())
    if need <= memory:
        return
    # the sizes to lower: those of the kind's model raised from their defaults, nearest
    # their bounds first
    sizes = [*size_params(cfg.net, "model.net"), *size_params(cfg.spec, f"model.{cfg.kind}")]
    sizes.sort(key=lambda s: -max(s[1] if isinstance(s[1], tuple) else [s[1]]) / s[2])
    named = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v, _ in sizes[:3])
    raise ConfigError(f"params.yaml: model.kind={cfg.kind} has {n:,} parameters, which need "
                      f"{need / 2**30:.1f} GiB to train (weights, gradients, Adam), more than this "
                      f"machine's {memory / 2**30:.1f} GiB; lower the model's sizes"
                      + (f", the largest: {named}" if named else ""))
