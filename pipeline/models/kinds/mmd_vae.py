"""MMD-VAE (InfoVAE, Zhao et al. 2019): a deterministic encoder, and the maximum mean
discrepancy between encoded codes and prior samples in place of the KL term.

    z_b = f(x_b)                                  (deterministic)
    MMD^2(q, p) ~= mean k(z, z') + mean k(z~, z~') - 2 mean k(z, z~),  z~ ~ N(0, I)
    k(a, b) = exp(-||a - b||^2 / L)               (the InfoVAE kernel)
    loss = mean_b -log p(x_b | z_b) + model.mmd_vae.weight * MMD^2

The MMD is the biased (V-statistic) estimate over the local batch, as in the seed; it is
exactly 0 for identical sample sets. With no encoder variance there is no q(z|x) to
sample log p(x) from, so evaluation uses the proposal N(f(x), s^2 I) with
s = model.mmd_vae.proposal_std: any full-support proposal gives a consistent estimate (and
in expectation a lower bound) of log p(x); one far from the true posterior gives a
looser bound, so the MMD-VAE number is conservative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict

import torch

from pipeline.core.errors import check
from pipeline.core.schema import param
from pipeline.models.base import Kind
from pipeline.models.kinds.vae import VAE


@dataclass(frozen=True)
class MMDVAEConfig:
    """MMD-VAE (InfoVAE): a deterministic encoder and an MMD penalty instead of the KL."""
    weight: float = param(1000.0, "weight of the MMD term")
    proposal_std: float = param(0.2, "std of the N(f(x), s^2 I) proposal for log p(x) at evaluation")

    def __post_init__(self):
        for key in ("weight", "proposal_std"):
            value = getattr(self, key)
            check(math.isfinite(value) and value > 0, key, value, "use a number > 0")


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, L), (M, L) -> (N, M): exp(-||a_i - b_j||^2 / L)."""
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1) - 2 * a @ b.t()  # no sqrt: finite grads at 0
    return torch.exp(-sq.clamp_min(0) / a.shape[-1])


def mmd(z: torch.Tensor, z_prior: torch.Tensor) -> torch.Tensor:
    """Squared MMD between two (N, L) sample sets under `gaussian_kernel` (V-statistic)."""
    return (gaussian_kernel(z, z).mean() + gaussian_kernel(z_prior, z_prior).mean()
            - 2 * gaussian_kernel(z, z_prior).mean())


class MMDVAE(VAE):
    code_factor = 1  # the encoder emits z only

    def encode(self, x: torch.Tensor):
        """(B, D) -> (f(x), log s^2): the code and the evaluation proposal's log-variance."""
        z = self.encoder(x)[0]
        return z, torch.full_like(z, 2 * math.log(self.spec.proposal_std))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        z, _ = self.encode(x)  # (B, L)
        recon = -self.likelihood.log_prob(x, self.decode(z)).mean()
        divergence = mmd(z, torch.randn_like(z))
        return {"loss": recon + self.spec.weight * divergence, "recon": recon, "mmd": divergence}


KIND = Kind("mmd_vae", MMDVAEConfig, MMDVAE)
