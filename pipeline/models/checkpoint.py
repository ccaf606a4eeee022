"""The self-describing model file, and the upgrade of files written before the layout of
params changed (format 2: one flat `model` section).

A model file holds {"format", "kind", "config", "state_dict"} so any later stage rebuilds
the model from the file alone. It loads with torch.load(weights_only=True): plain
containers and tensors only, no pickled code. The file's config is checked (size bounds,
memory) and its tensors' shapes compared with those the config builds on the meta device
before the model is built, so a crafted small file cannot make a stage allocate.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Union

import torch

from pipeline.core.errors import ConfigError, DataError
from pipeline.core.failures import first_line
from pipeline.core.io import atomic_path
from pipeline.core.schema import apply_overrides, build, to_dict
from pipeline.models.base import GenerativeModel
from pipeline.models.registry import KINDS, ModelConfig, build_model, meta_model

FORMAT_VERSION = 3

# Format 2 (up to f094c6b) kept every kind's keys in one flat `model` mapping. Frozen
# history: new kinds never appear here.
V2_KEYS = {
    "encoder": ["net.encoder"], "latent_dim": ["net.latent_dim"], "hidden": ["net.hidden"],
    "conv_channels": ["net.conv_channels"], "activation": ["net.activation"],
    "likelihood": ["likelihood.name"], "gaussian_std": ["likelihood.gaussian_std"],
    "experts": ["moe_vae.experts"], "balancing_weight": ["moe_vae.balancing_weight"],
    "top_k": ["moe_vae.top_k"], "manager_warmup_epochs": ["moe_vae.warmup_epochs"],
    "manager_encoder": ["moe_vae.manager.encoder"], "manager_hidden": ["moe_vae.manager.hidden"],
    "manager_activation": ["moe_vae.manager.activation"],
    "manager_batchnorm": ["moe_vae.manager.batchnorm"], "manager_input": ["moe_vae.manager.input"],
    "entropy_weight": ["moe_vae.manager.entropy_weight"],
    "marginal_entropy_weight": ["moe_vae.manager.marginal_entropy_weight"],
    "consistency_weight": ["moe_vae.manager.consistency_weight"],
    "consistency_eps": ["moe_vae.manager.consistency_eps"],
    "augment_weight": ["moe_vae.manager.augment_weight"],
    "components": ["gmm_vae.components"], "learn_prior_weights": ["gmm_vae.learn_prior_weights"],
    "mmd_weight": ["mmd_vae.weight"], "mmd_proposal_std": ["mmd_vae.proposal_std"],
    "importance_samples": ["vae.importance_samples", "gmm_vae.importance_samples"],
}


# Keys added to a kind's block after format 3, with the value a file written before them
# was trained with, where their default differs: a stored config without the key reads
# it as this value, not as today's default.
ADDED_KEYS = {"mmd_vae": {"kernel": "gaussian"}}  # issue 20 made IMQ the default


def upgrade_v2(flat: dict) -> dict:
    """A format-2 flat model mapping -> the nested `model` section it means."""
    over = {"kind": flat["kind"]}
    for key, value in flat.items():
        for path in V2_KEYS.get(key, []):
            if path.split(".")[0] in ("net", "likelihood") or path.split(".")[0] in KINDS:
                over[path] = value
    return apply_overrides({}, over)


def model_state(model: GenerativeModel) -> dict:
    return {"format": FORMAT_VERSION, "kind": model.cfg.kind, "config": to_dict(model.cfg, compact=True),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def check_weights(cfg, weights: dict) -> None:
    """The tensors `weights` have every key and shape of the state_dict `cfg` builds (on
    the meta device: nothing allocated), and nothing else; else a DataError naming the
    first key that differs."""
    expected = {k: tuple(v.shape) for k, v in meta_model(cfg).state_dict().items()}
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
             for k, v in weights.items()}
    for key in [*expected, *(k for k in found if k not in expected)]:
        if found.get(key, "missing") != expected.get(key, "absent"):
            raise DataError(f"its config does not match its weights: {key} is "
                            f"{found.get(key, 'missing')} in the file but {expected.get(key, 'absent')} "
                            f"for its config; not a model file this project wrote, retrain "
                            f"(dvc repro train)")


def model_from_state(state: dict) -> GenerativeModel:
    config = state["config"]
    if state.get("format", 2) == 2:
        config = upgrade_v2(config)
    config = {**config, **{kind: {**added, **config[kind]} for kind, added in ADDED_KEYS.items()
                           if isinstance(config.get(kind), dict)}}
    cfg = build(ModelConfig, config, "model")  # size bounds and memory, before any allocation
    check_weights(cfg, state["state_dict"])
    model = build_model(cfg)
    model.load_state_dict(state["state_dict"])
    return model


def save_model(model: GenerativeModel, path: Union[str, Path]) -> None:
    with atomic_path(path) as tmp:
        torch.save(model_state(model), tmp)


def load_model(path: Union[str, Path]) -> GenerativeModel:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run the train stage first (dvc repro train)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" not in str(e):  # not the unpickler's refusal: a damaged file
            raise DataError(f"{path} is not a model file of this project ({first_line(e)}); "
                            f"rerun the train stage to write it again") from None
        # torch's message advises loading it unsafely: never shown for an untrusted file
        raise DataError(f"{path} holds code or types a model file never has, so it was refused "
                        f"unread; rerun the train stage to write it again (dvc repro train)") from None
    except Exception as e:  # noqa: BLE001  truncated zip, not a torch file
        raise DataError(f"{path} is not a model file of this project ({first_line(e)}); "
                        f"rerun the train stage to write it again") from None
    try:
        return model_from_state(state)
    except ConfigError as e:  # the file's config, not params.yaml's
        raise ConfigError(f"{path}: its config no longer builds "
                          f"({str(e).removeprefix('params.yaml: ')}); retrain it") from None
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001  missing keys, wrong types
        raise DataError(f"{path} is not a model file of this project ({first_line(e)}); "
                        f"rerun the train stage to write it again") from None
