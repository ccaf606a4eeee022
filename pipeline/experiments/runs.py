"""The params of one run of a preset: the only preset code a run's numbers depend on.

A run of preset P with seed S is the code's defaults (pipeline.params.Params()), then
params.yaml's RUN_KEYS, then P's resolved overrides, then train.seed = S. How a preset
file resolves to those overrides (presets.py) is recorded in experiments/index.yaml, which
each run stage depends on, so experiments/dvc.yaml lists this file, not presets.py: an
edit to the resolution that resolves every preset as before stales no run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.core.errors import ConfigError
from pipeline.core.schema import apply_overrides, to_dict
from pipeline.params import Params, params_from_dict

if TYPE_CHECKING:
    from pipeline.experiments.presets import Preset

# Where and how a run executes (params.yaml's, for every run): not part of a recipe.
RUN_KEYS = ("train.num_workers", "train.use_gpu", "train.storage_path", "train.max_failures",
            "train.tensorboard", "train.threads", "train.portable_cpu", "train.deterministic",
            "train.compile", "evaluate.workers", "evaluate.use_gpu")


def run_params(params: Params, preset: "Preset", seed: int) -> Params:
    """The params of run (preset, seed): the code's defaults, then params.yaml's RUN_KEYS
    (where and how runs execute), then the preset's overrides, then train.seed = seed."""
    here = to_dict(params)
    run_keys = {}
    for dotted in RUN_KEYS:
        section, key = dotted.split(".")
        run_keys[dotted] = here[section][key]
    try:
        return params_from_dict(apply_overrides(to_dict(Params()), {
            **run_keys, **preset.overrides, "train.seed": seed}))
    except ConfigError as e:
        files = " <- ".join(f"params/{n}.yaml" for n in reversed(preset.chain))
        raise ConfigError(f"preset {preset.name} ({files}): {str(e).removeprefix('params.yaml: ')}") from None
