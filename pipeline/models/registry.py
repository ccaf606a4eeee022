"""The model registry: every module in pipeline/models/kinds/ is one kind.

A kind module defines a config dataclass, a GenerativeModel subclass built from it, and
`KIND = Kind(name, config, model)` with `name` equal to the module's name. Discovery is
by folder, so adding a kind is one new module plus its block in params.yaml
(`model.<name>: {...}`); `ModelConfig`, the `model` section, gets one field per kind.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import make_dataclass
from typing import Dict

import pipeline.models.kinds as kinds_package
from pipeline.core.errors import check
from pipeline.core.schema import apply_overrides, build, param
from pipeline.models.base import GenerativeModel, Kind
from pipeline.models.blocks import NetConfig
from pipeline.models.distributions import LikelihoodConfig
from pipeline.models.size import check_memory, on_meta

SHARED = ("kind", "net", "likelihood")  # the model section's keys that are not kinds


def discover() -> Dict[str, Kind]:
    found = {}
    for info in sorted(pkgutil.iter_modules(kinds_package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{kinds_package.__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if not isinstance(kind, Kind) or kind.name != info.name or kind.name in SHARED:
            raise ImportError(f"{module.__file__}: a kind module must define KIND = Kind("
                              f"name={info.name!r}, config=..., model=...)")
        found[kind.name] = kind
    return found


KINDS: Dict[str, Kind] = discover()


def _post_init(self) -> None:
    check(self.kind in KINDS, "kind", self.kind, f"choose one of {sorted(KINDS)}")
    KINDS[self.kind].model.check_config(self)
    check(not self.net.shared_hidden or KINDS[self.kind].model.has_experts, "net.shared_hidden", True,
          f"model.kind={self.kind} has one encoder and decoder, no experts to share them; "
          f"use false")
    check_memory(self, meta_model(self))  # a few ms: shapes only, before any stage allocates


# The `model` section: kind, the shared parts, then one block per kind (only the block of
# model.kind is used; the others let `dvc exp run -S model.kind=...` switch without edits).
ModelConfig = make_dataclass(
    "ModelConfig",
    [("kind", str, param("moe_vae", f"the model: one of {sorted(KINDS)} (a module in "
                                    f"pipeline/models/kinds/)")),
     ("net", NetConfig, param(factory=NetConfig, doc="encoder and decoder blocks")),
     ("likelihood", LikelihoodConfig, param(factory=LikelihoodConfig, doc="p(x|z)")),
     *[(name, k.config, param(factory=k.config, doc=(k.config.__doc__ or "").strip()))
       for name, k in KINDS.items()]],
    frozen=True,
    namespace={"__post_init__": _post_init, "__module__": __name__,
               "spec": property(lambda self: getattr(self, self.kind), doc="model.kind's block"),
               "__doc__": "The `model` section of params.yaml."})


def build_model(cfg) -> GenerativeModel:
    """A fresh model of kind cfg.kind from the `model` section `cfg` (a ModelConfig)."""
    return KINDS[cfg.kind].model(cfg)


def meta_model(cfg) -> GenerativeModel:
    """The model `cfg` builds, on the meta device: its parameters' shapes, no memory."""
    return on_meta(lambda: KINDS[cfg.kind].model(cfg))


def side_input(cfg, pixels, neighbours=None):
    """The kind's per-image training input from the (N, D) uint8 pixels and the cached
    (N, k) neighbour distances (or None), or None (GenerativeModel.side_input)."""
    return KINDS[cfg.kind].model.side_input(cfg, pixels, neighbours)


def side_key(cfg):
    """What the kind's side input depends on besides the pixels, or None
    (GenerativeModel.side_key): equal keys, equal side inputs."""
    return KINDS[cfg.kind].model.side_key(cfg)


def model_config(overrides: Dict[str, object] = None) -> "ModelConfig":
    """A validated ModelConfig from dotted keys relative to `model`, e.g.
    {"kind": "vae", "net.hidden": 32}: for tests, benchmarks and notebooks."""
    return build(ModelConfig, apply_overrides({}, dict(overrides or {})), "model")
