"""Densities of the latent codes and the pixel likelihoods p(x|z), named after the maths.

Shapes: B batch, K experts, L latent, D = 784 pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.core.errors import check
from pipeline.core.schema import param

LOG_2PI = math.log(2 * math.pi)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)


def log_std_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dim."""
    return -0.5 * (LOG_2PI + z ** 2).sum(-1)


def kl_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)."""
    return 0.5 * (mu ** 2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)


class Gaussian:
    """p(x|z) = N(x; sigmoid(logits), std^2 I) on [0, 1] pixels (the seeds: std 0.5).

    A density over continuous pixels, so log p(x) is in nats per image but not comparable
    with discrete (Bernoulli) likelihoods.
    """

    def __init__(self, std: float):
        self.std = std
        self._const = -0.5 * LOG_2PI - math.log(std)

    def prepare(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return x

    def log_prob(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(..., D) x against (..., D) decoder logits -> (...) summed over pixels."""
        mean = torch.sigmoid(logits)
        return (self._const - 0.5 * ((x - mean) / self.std) ** 2).sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class Bernoulli:
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(logits_d)) on dynamically binarized pixels.

    Each time a batch is drawn, x ~ Bernoulli(grey level): the protocol of the
    log-likelihood literature (IWAE, VampPrior) for MNIST.
    """

    def prepare(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.bernoulli(x, generator=generator)

    def log_prob(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


@dataclass(frozen=True)
class LikelihoodConfig:
    """p(x|z), shared by every kind."""
    name: str = param("gaussian", "gaussian (fixed std on [0, 1] pixels, the seeds) | bernoulli "
                                  "(dynamically binarized pixels, the likelihood literature's protocol)")
    gaussian_std: float = param(0.5, "std of the gaussian likelihood, on [0, 1] pixels")

    def __post_init__(self):
        check(self.name in ("gaussian", "bernoulli"), "name", self.name, "choose 'gaussian' or 'bernoulli'")
        check(math.isfinite(self.gaussian_std) and self.gaussian_std > 0, "gaussian_std",
              self.gaussian_std, "use a number > 0")

    def build(self):
        return Gaussian(self.gaussian_std) if self.name == "gaussian" else Bernoulli()
