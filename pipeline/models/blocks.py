"""Building blocks shared by every model kind: activations, MLPs, and K parallel MLPs."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

ACTIVATION_MODULES = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh}


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers with `activation` between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATION_MODULES[activation]())
    return nn.Sequential(*layers)


class BatchedLinear(nn.Module):
    """K independent linear maps applied at once: (K, B, I) -> (K, B, O) by one bmm.

    Initialised like nn.Linear (uniform +-1/sqrt(I)) so a batched model and K separate
    nn.Linear models start from the same distribution.
    """

    def __init__(self, k: int, n_in: int, n_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(k, n_in, n_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # shared input (B, I): one (B, I) @ (I, K*O) GEMM instead of K
            k, n_in, n_out = self.weight.shape
            w = self.weight.permute(1, 0, 2).reshape(n_in, k * n_out)
            y = (x @ w).view(x.shape[0], k, n_out).transpose(0, 1)  # (K, B, O)
            return y + self.bias
        return torch.baddbmm(self.bias, x, self.weight)  # (K, B, O)

    def one(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Expert k alone on (N, I) inputs -> (N, O)."""
        return torch.addmm(self.bias[k, 0], x, self.weight[k])


class BatchedMLP(nn.Module):
    """K MLPs with the same layer sizes, evaluated together with batched matmuls."""

    def __init__(self, k: int, sizes: Sequence[int], activation: str):
        super().__init__()
        self.layers = nn.ModuleList(BatchedLinear(k, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = ACTIVATION_MODULES[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, I) shared or (K, B, I) per-expert input -> (K, B, O)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x

    def one(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Only MLP k, on (N, I) -> (N, O): for per-expert work such as importance sampling."""
        for i, layer in enumerate(self.layers):
            x = layer.one(k, x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x
