"""The one interface every model kind implements.

Training needs only `forward(x) -> dict` (DDP calls forward, so the loss lives there);
evaluation and plots use the rest. x is what `prepare` makes of grey pixels in [0, 1]:
(B, 784) passed through `likelihood.prepare` (binarized for the Bernoulli likelihood), or,
for an MoE-VAE whose manager reads grey pixels (model.moe_vae.manager.input: grey), (B, 2, 784)
holding that and the grey pixels; `pixels(x)` is the (B, 784) image the likelihood scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Type

import torch
import torch.nn as nn


class GenerativeModel(nn.Module):
    """Built from the whole `model` section (registry.ModelConfig): `cfg.net` and
    `cfg.likelihood` are shared by every kind, `self.spec` is this kind's own block."""

    has_clusters = False  # True: cluster_probs gives a cluster variable (restarts, evaluation)
    has_experts = False  # True: K expert networks behind a manager (model.net.shared_hidden applies)
    skips_parameters = False  # True: some epochs leave parameters without a gradient (DDP looks)

    def __init__(self, cfg: Any, n_pixels: int = 784):
        super().__init__()
        self.cfg = cfg
        self.spec = cfg.spec  # e.g. MoEVAEConfig for model.kind: moe_vae
        self.net = cfg.net
        self.n_pixels = n_pixels
        self.likelihood = cfg.likelihood.build()
        self.epoch = 0  # the training epoch under way; see set_epoch

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """This kind's rules across the shared parts of `cfg` (raise core.errors.FieldError,
        keys relative to `model`); its own block checks itself in __post_init__."""

    @classmethod
    def side_input(cls, cfg: Any, pixels: torch.Tensor,
                   neighbours: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """(N, ...) per-image data that training passes to forward beside each batch, made
        once from the (N, D) uint8 training pixels, label-free (the MoE-VAE: each image's
        VAT radius), reading `neighbours` ((N, k) distances of the neighbours stage, or
        None) where it can; None (the default): forward(x) alone."""
        return None

    @classmethod
    def side_key(cls, cfg: Any) -> Optional[tuple]:
        """What side_input depends on besides the pixels: configs with equal keys get equal
        side inputs, so a sweep computes it once for all of them. None: not shared."""
        return None

    def prepare(self, grey: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, D) grey pixels in [0, 1] -> the model input x (Bernoulli: a fresh draw per call)."""
        return self.likelihood.prepare(grey, generator=generator)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, D) image in a model input x: what the likelihood scores and plots show."""
        return x

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{'loss': scalar to minimise, <part>: scalar, ...}; every value is logged. A kind
        with a side_input takes its rows of the batch as a second argument."""
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self(x)

    def set_epoch(self, epoch: int) -> None:
        """Called before every training epoch (0-based), for losses that follow a schedule."""
        self.epoch = epoch

    def batch_scale(self, epoch: int) -> int:
        """Epoch `epoch` (0-based) steps on train.batch_size x this many images (same lr):
        1, unless a kind trains a phase on larger batches."""
        return 1

    def sample(self, n: int) -> torch.Tensor:
        """(n, D) pixel means of samples from the generative model."""
        raise NotImplementedError

    def sample_components(self, n: int) -> torch.Tensor:
        """(C, n, D): n samples from each mixture component (expert or prior mode)."""
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) pixel means of the reconstruction from the posterior mean."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor):
        """Posterior parameters (mu, logvar) of q(z | x); shapes are the kind's own
        ((B, L) for one latent, (K, B, L) for K experts)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder logits for codes z; `likelihood.mean(logits)` gives pixel means."""
        raise NotImplementedError

    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) the code of each image (the posterior mean; for the MoE-VAE, that of the
        expert the manager picks): what latent plots and k-means clustering use."""
        raise NotImplementedError

    def morph(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
        """(P, steps, D) pixel means decoded along the straight line between the codes
        of P image pairs (x_a[i], x_b[i])."""
        raise NotImplementedError

    def cluster_probs(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, C) soft cluster assignment, or None where clusters come from k-means."""
        return None

    def sub_cluster_probs(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, C, J) second-level assignment p(j | x, c) inside each cluster c, for kinds
        whose clusters are themselves mixtures (hmoe_vae); None for the others."""
        return None

    def log_importance_weights(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """(B, S) log w_s = log p(x, h_s) - log q(h_s | x), h_s ~ q(h | x).

        logsumexp_s(log w_s) - log S is a consistent estimate of log p(x) and, in
        expectation, a lower bound on it (Burda et al. 2016, eq. 8).
        """
        raise NotImplementedError


@dataclass(frozen=True)
class Kind:
    """What a module in pipeline/models/kinds/ declares as KIND (see registry.py)."""
    name: str  # model.kind, the module's name, and the key of its params block
    config: type  # its frozen config dataclass
    model: Type[GenerativeModel]
