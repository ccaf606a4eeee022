"""params.yaml <-> frozen dataclasses: strict building, dotted overrides, field docs.

Every section of params.yaml maps onto a dataclass whose fields carry their own one-line
description (`param(default, "doc")`); `build` rejects unknown keys and wrong types with
a one-line ConfigError naming the dotted key, and pipeline/paramdoc.py writes the
parameter reference (docs/params.md) from the descriptions, so the docs never drift.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Any, Dict, Optional, Union, get_args, get_origin, get_type_hints

from pipeline.core.errors import ConfigError, FieldError


def param(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None,
          added: bool = False):
    """A dataclass field with its description; `factory` for mutable or nested defaults.
    added: a key added after runs were recorded, whose default leaves them as they were;
    to_dict(compact=True) leaves it out at its default (see there)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc, "added": added})


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check a YAML scalar against a field type (ints stay ints, no bool-as-int)."""
    origin, args = get_origin(typ), get_args(typ)
    if origin is Union:
        for option in args:
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"params.yaml: {key}={value!r} has the wrong type; expected {type_name(typ)}")
    if typ is type(None):
        if value is None:
            return None
    elif typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is Any:
        return value
    raise ConfigError(f"params.yaml: {key}={value!r} has the wrong type; expected {type_name(typ)}")


def type_name(typ: Any) -> str:
    if get_origin(typ) is Union:
        return " | ".join(type_name(a) for a in get_args(typ))
    return "null" if typ is type(None) else getattr(typ, "__name__", str(typ))


def build(cls, values: Optional[dict], prefix: str):
    """Build dataclass `cls` from a params mapping, rejecting unknown keys; errors name
    the dotted key under `prefix`."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"params.yaml: {prefix or 'the file'} must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"key '{prefix}.{unknown[0]}'" if prefix else f"section '{unknown[0]}'"
        raise ConfigError(f"params.yaml: unknown {where}; known are {names}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = (build(hints[name], value, key) if dataclasses.is_dataclass(hints[name])
                        else _coerce(key, value, hints[name]))
    try:
        return cls(**kwargs)
    except FieldError as e:
        raise e.at(prefix) from None


def to_dict(cfg: Any, compact: bool = False) -> Any:
    """A dataclass tree as plain dicts, lists and scalars (tuples become lists: YAML's view).
    compact: leave out the keys declared `added` that hold their default. A model file and
    models/params.yaml store the config this way, so a key added later with a default that
    changes nothing leaves their bytes, and every DVC hash recorded over them, as they were
    (and an older checkout still reads a file that does not use it); reading one back fills
    the default in."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name), compact) for f in dataclasses.fields(cfg)
                if not (compact and f.metadata.get("added") and getattr(cfg, f.name) == f.default)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v, compact) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v, compact) for k, v in cfg.items()}
    return cfg


def apply_overrides(raw: dict, overrides: Dict[str, Any]) -> dict:
    """A copy of the params mapping `raw` with dotted overrides (`model.net.hidden: 64`,
    any depth) applied; a value that is a mapping replaces the whole subsection."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = out
        for part in path:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = copy.deepcopy(value)
    return out
