"""tune.space translated to Ray Tune domains (its syntax is checked in pipeline/params/tune.py).

    tune:
      space:
        model.moe_vae.balancing_weight: {loguniform: [0.01, 1.0]}  # log-uniform on [lo, hi]
        train.lr: {uniform: [0.0005, 0.002]}                       # uniform on [lo, hi]
        model.net.latent_dim: {choice: [8, 20]}                     # one drawn per trial (random)
        model.moe_vae.experts: {grid: [5, 10]}                      # every value, crossed

Any `model.*` / `train.*` key is applied to the trial's params exactly like
`load_params(overrides={key: value})`, so keys added to those sections later (a new
kind's block) are sweepable with no change here. Whether each value builds valid params
is checked once, before the sweep (pipeline.sweep.run.check_space).
"""
from __future__ import annotations

from typing import Any, Dict

from pipeline.core.errors import ConfigError
from pipeline.core.schema import apply_overrides, to_dict
from pipeline.params import Params, params_from_dict

def param_space(space: Dict[str, dict], search: str) -> Dict[str, Any]:
    """tune.space -> Tune's param_space: flat {"model.net.latent_dim": <Domain>, ...}."""
    from ray import tune

    out: Dict[str, Any] = {}
    for key, spec in space.items():
        kind, values = next(iter(spec.items()))
        if kind == "loguniform":
            out[key] = tune.loguniform(*values)
        elif kind == "uniform":
            out[key] = tune.uniform(*values)
        elif kind == "grid" or search == "grid":
            out[key] = tune.grid_search(list(values))
        else:
            out[key] = tune.choice(list(values))
    return out


def trial_count(space: Dict[str, dict], search: str, num_samples: int) -> int:
    """Trials Tune will create: num_samples x the product of the grid sizes."""
    n = num_samples
    for spec in space.values():
        kind, values = next(iter(spec.items()))
        if kind == "grid" or (search == "grid" and kind == "choice"):
            n *= len(values)
    return n


def check_space(params: Params) -> None:
    """Build Params once per listed value of tune.space (both bounds of a range), so an
    unknown key or a value its section rejects fails at config time, not in a trial."""
    base = to_dict(params)
    base["tune"]["space"] = {}  # the builds below must not re-check the space
    for key, spec in params.tune.space.items():
        kind, values = next(iter(spec.items()))
        # Ranges draw floats: try them as floats so an int key gets "use choice" now.
        for value in ([float(v) for v in values] if kind in ("loguniform", "uniform") else values):
            try:
                params_from_dict(apply_overrides(base, {key: value}))
            except ConfigError as e:
                hint = "; ranges draw floats, use choice for integers" if "wrong type" in str(e) else ""
                raise ConfigError(f"params.yaml: tune.space.{key} value {value!r} is rejected: "
                                  f"{str(e).removeprefix('params.yaml: ')}{hint}") from None
