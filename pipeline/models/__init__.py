"""The model registry and the self-describing model file.

A model file holds {"kind", "config", "state_dict"} so any later stage rebuilds the
model from the file alone. It loads with torch.load(weights_only=True): plain
containers and tensors only, no pickled code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Type, Union

import torch

from pipeline.models.base import GenerativeModel
from pipeline.models.gmm_vae import GMMVAE
from pipeline.models.mmd_vae import MMDVAE
from pipeline.models.moe_vae import MoEVAE
from pipeline.models.vae import VAE

REGISTRY: Dict[str, Type[GenerativeModel]] = {
    "moe_vae": MoEVAE,
    "vae": VAE,
    "mmd_vae": MMDVAE,
    "gmm_vae": GMMVAE,
}

FORMAT_VERSION = 2


def build_model(cfg) -> GenerativeModel:
    return REGISTRY[cfg.kind](cfg)


def model_state(model: GenerativeModel) -> dict:
    from pipeline.config import to_dict

    return {"format": FORMAT_VERSION, "kind": model.cfg.kind, "config": to_dict(model.cfg),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def model_from_state(state: dict) -> GenerativeModel:
    from pipeline.config import ModelConfig, build

    cfg = build(ModelConfig, state["config"], "model")
    model = build_model(cfg)
    model.load_state_dict(state["state_dict"])
    return model


def save_model(model: GenerativeModel, path: Union[str, Path]) -> None:
    from pipeline.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model_state(model), tmp)


def load_model(path: Union[str, Path]) -> GenerativeModel:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run the train stage first (dvc repro train)")
    return model_from_state(torch.load(path, map_location="cpu", weights_only=True))
