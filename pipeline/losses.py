"""Densities, divergences and the MoE balancing term, named after the maths.

Shapes: B batch, K experts, L latent, D = 784 pixels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

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


def build_likelihood(kind: str, gaussian_std: float):
    return Gaussian(gaussian_std) if kind == "gaussian" else Bernoulli()


def distributed() -> bool:
    """True inside a DDP group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_batch_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 across every DDP rank's batch, differentiably.

    The all-reduce's backward is an all-reduce of the gradients, so after DDP averages
    gradients over R ranks, the result equals the gradient of the term computed on the
    global batch (R identical copies, each summed R ways, divided by R).
    """
    local = t.sum(0)
    return _AllReduceSum.apply(local) if distributed() else local


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks: what the deprecated
    torch.distributed.nn.functional.all_reduce did, without its warning on every rank."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """t summed over every DDP rank (t itself without DDP), for bookkeeping, not gradients.
    NCCL reduces CUDA tensors only, so under NCCL a CPU tensor travels via the GPU."""
    if not distributed():
        return t
    wire = t.cuda() if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(wire)
    return wire.to(t.device)


def balancing_loss(probs: torch.Tensor) -> torch.Tensor:
    """Var_k(sum_b p_k(x_b)): population variance over experts of the summed manager
    probabilities (B, K) of the global batch. Zero iff every expert gets the same mass."""
    usage = global_batch_sum(probs)  # (K,)
    return usage.var(unbiased=False)
