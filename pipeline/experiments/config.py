"""The `compare` and `results` sections: named presets run over seeds (one mechanism)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from pipeline.core.errors import check
from pipeline.core.schema import param

PRESET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
SETS = ("compare", "results")  # params.yaml sections of this type, each with <set>/dvc.yaml


def check_overrides(key: str, over: Any, forbidden: Sequence[str] = (), fix: str = "") -> dict:
    """A {'section.key[.sub...]': value} mapping (None = empty), or a FieldError naming `key`."""
    over = {} if over is None else over
    check(isinstance(over, dict) and all(isinstance(k, str) and "." in k and all(k.split("."))
                                         for k in over) and not set(over) & set(forbidden),
          key, over, "use a mapping of dotted 'section.key' to value" + (f" ({fix})" if fix else ""))
    return dict(over)


@dataclass(frozen=True)
class ExperimentsConfig:
    presets: Any = param(("moe_imsat",), "names of params/<name>.yaml recipes, one table row each")
    seeds: Any = param((0, 1, 2), "train.seed of each run; the table shows mean +- std over them")
    overrides: Any = param(None, "{dotted.key: value} applied after every preset (e.g. fewer epochs)")
    presets_dir: str = param("params", "where the preset files live")

    def __post_init__(self):
        p, s = self.presets, self.seeds
        check(isinstance(p, (list, tuple)) and len(p) > 0 and len(set(p)) == len(p) and all(
            isinstance(n, str) and PRESET_NAME.match(n) for n in p), "presets", p,
            "use a non-empty list of distinct preset names (files params/<name>.yaml)")
        check(isinstance(s, (list, tuple)) and len(s) > 0 and len(set(s)) == len(s) and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in s),
            "seeds", s, "use a non-empty list of distinct integers >= 0")
        object.__setattr__(self, "presets", tuple(p))
        object.__setattr__(self, "seeds", tuple(s))
        object.__setattr__(self, "overrides", check_overrides("overrides", self.overrides))
