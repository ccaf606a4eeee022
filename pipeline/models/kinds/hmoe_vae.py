"""Hierarchical MoE-VAE: a manager routes each image over K experts, and each expert is
itself a manager over J sub-expert VAEs, so the top level can find digits and the second
level the ways each digit is drawn.

    p(k | x)    = softmax_k(manager(x))                     (B, K)   top level, as moe_vae
    p(j | x, k) = softmax_j(sub_manager_k(x))               (B, K, J) one manager per expert
    L_kj(x)     = KL(q_kj(z|x) || N(0, I)) - E_q log p_kj(x|z)   (B, K, J), one sample
    loss = mean_b sum_k p(k|x_b) sum_j p(j|x_b,k) L_kj(x_b)                 expected loss
           + lambda_1 * Var_k(sum_b p(k|x_b))                                top balancing
           + lambda_2 * sum_k Var_j(sum_b sg[p(k|x_b)] p(j|x_b,k))           second level
           + the top manager's IMSAT terms (manager.py), as in moe_vae

sg[.] stops the gradient: the second-level balancing moves only the sub-managers (a
top-level expert whose sub-usage is uneven is not pushed to take fewer images). Both
batch sums run over the global (all DDP ranks) batch. The K*J sub-experts are one
batched block of E = K*J encoders and decoders (leaf e = k*J + j), and the K sub-managers
another, so no Python loop runs over experts. With J = 1 this is moe_vae with K experts;
with K = 1 it is moe_vae with J experts whose manager is the sub-manager (tests check both).

The generative model is p(x) = sum_{k,j} p_kj(x) / (K*J); evaluation's log p(x) samples
the latent (k, j, z) from q(k|x) q(j|x,k) q_kj(z|x) (moe_vae's estimator over the leaves).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch
import torch.nn.functional as F

from pipeline.core.distributed import global_batch_sum
from pipeline.core.errors import check
from pipeline.core.schema import param
from pipeline.models.base import GenerativeModel, Kind
from pipeline.models.blocks import decoder, encoder
from pipeline.models.kinds.moe_vae import MoEVAE
from pipeline.models.manager import (ManagerConfig, balancing_loss, build_manager, check_manager_input,
                                     manager_terms)
from pipeline.models.size import check_sizes


@dataclass(frozen=True)
class HMoEVAEConfig:
    """Hierarchical MoE-VAE: K experts, each a manager over J sub-expert VAEs."""
    experts: int = param(10, "K, top-level experts behind the manager (the clusters)")
    sub_experts: int = param(3, "J, sub-expert VAEs inside each expert (its variants)")
    balancing_weight: float = param(0.1, "lambda_1 in front of Var_k(sum_batch p(k|x))")
    sub_balancing_weight: float = param(1.0, "lambda_2 in front of sum_k Var_j(sum_batch p(k|x) p(j|x,k))")
    manager: ManagerConfig = param(factory=ManagerConfig, doc="the top-level manager and its terms "
                                                              "(as model.moe_vae.manager)")

    # as moe_vae's experts; sub_experts 30x the recipes' 3 (the K x J sub-experts together
    # are bounded by size.check_memory)
    SIZE_LIMITS: ClassVar[Dict[str, int]] = {"experts": 1000, "sub_experts": 100}

    def __post_init__(self):
        check_sizes(self)
        for key in ("balancing_weight", "sub_balancing_weight"):
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, key, value, "use a finite number >= 0")


def sub_balancing_loss(probs: torch.Tensor, sub_probs: torch.Tensor) -> torch.Tensor:
    """sum_k Var_j(u_kj), u_kj = sum_b sg[p(k|x_b)] p(j|x_b,k) over the global batch:
    (B, K) and (B, K, J) -> scalar, zero iff every expert spreads its mass evenly."""
    usage = global_batch_sum(probs.detach()[:, :, None] * sub_probs)  # (K, J)
    return usage.var(dim=-1, unbiased=False).sum()


class HMoEVAE(MoEVAE):
    """moe_vae with E = K*J leaves; inherits views, encode/decode, the per-leaf losses,
    routing-based reconstruction and morphing, and the importance-sampled log p(x)."""

    def __init__(self, cfg, n_pixels: int = 784):
        GenerativeModel.__init__(self, cfg, n_pixels)  # not MoEVAE's: its experts are the leaves
        k, j, net = self.spec.experts, self.spec.sub_experts, self.net
        self.manager = build_manager(self.spec.manager, net, k, n_pixels)  # (B, D) -> (1, B, K)
        self.sub_managers = encoder(k, net, n_pixels, j)  # (B, D) -> (K, B, J)
        self.encoders = encoder(k * j, net, n_pixels, 2 * net.latent_dim)  # -> (K*J, B, 2L)
        self.decoders = decoder(k * j, net, n_pixels)  # (K*J, B, L) -> (K*J, B, D)
        self.set_epoch(0)  # MoEVAE's: the epoch-dependent switches (manager.augment_from)

    @classmethod
    def check_config(cls, cfg) -> None:
        check_manager_input(cfg.spec.manager, cfg.likelihood.name, "hmoe_vae.manager.input")

    @property
    def leaves(self) -> int:
        return self.spec.experts * self.spec.sub_experts

    def sub_probs(self, x_manager: torch.Tensor) -> torch.Tensor:
        """(B, D) manager view -> (B, K, J) p(j | x, k)."""
        return F.softmax(self.sub_managers(x_manager), dim=-1).transpose(0, 1)

    def sub_cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.sub_probs(self.views(x)[1])  # (B, K, J)

    def leaf_log_probs(self, x_manager: torch.Tensor) -> torch.Tensor:
        """log q(k, j | x) = log p(k|x) + log p(j|x,k), flattened to (B, K*J), leaf k*J + j."""
        log_k = F.log_softmax(self.manager_logits(x_manager), dim=-1)  # (B, K)
        log_j = F.log_softmax(self.sub_managers(x_manager), dim=-1).transpose(0, 1)  # (B, K, J)
        return (log_k[:, :, None] + log_j).flatten(1)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) leaf k*J + j of the top argmax k and, inside it, the sub-manager's argmax j,
        so reconstructions and sub-clusters follow the reported top-level cluster."""
        k = self.cluster_probs(x).argmax(-1)  # (B,)
        j = self.sub_cluster_probs(x)[torch.arange(len(k), device=k.device), k].argmax(-1)
        return k * self.spec.sub_experts + j

    def forward(self, x: torch.Tensor, radius: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        x, x_manager = self.views(x)
        b, k, j = x.shape[0], self.spec.experts, self.spec.sub_experts
        logits = self.manager_logits(x_manager)  # (B, K)
        probs = F.softmax(logits, dim=-1)
        sub_probs = self.sub_probs(x_manager)  # (B, K, J)
        leaf_loss, leaf_kl = self.expert_losses(x)  # (K*J, B) each
        weights = probs[:, :, None] * sub_probs  # (B, K, J) p(k, j | x)
        expected = (weights * leaf_loss.t().view(b, k, j)).sum((1, 2)).mean()
        kl = (weights * leaf_kl.t().view(b, k, j)).sum((1, 2)).mean()
        balancing = balancing_loss(probs)
        sub_balancing = sub_balancing_loss(probs, sub_probs)
        extra = manager_terms(self.spec.manager, self.manager_logits, x_manager, logits, probs, radius,
                              augment=self.augmenting)
        loss = (expected + self.spec.balancing_weight * balancing
                + self.spec.sub_balancing_weight * sub_balancing + extra.get("manager_loss", 0.0))
        return {"loss": loss, "expected_expert_loss": expected, "balancing_loss": balancing,
                "sub_balancing_loss": sub_balancing, "kl": kl, **extra}


KIND = Kind("hmoe_vae", HMoEVAEConfig, HMoEVAE)
