"""Building blocks shared by every model kind: activations, MLPs, K parallel MLPs, and
K parallel convolutional encoders/decoders (grouped convolutions, one group per expert).

Every encoder maps (B, D) -> (K, B, O) and every decoder (K, B, L) -> (K, B, D); the
single-latent kinds use K = 1. `model.net.encoder` picks `mlp` or `conv`; `model.net.layers`
and `model.net.gated` make the mlp blocks deeper or gated (the published 300-300 baseline);
`model.net.shared_hidden` lets the K experts share their hidden layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import check
from pipeline.core.schema import param
from pipeline.models.size import check_sizes

ACTIVATION_MODULES = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class NetConfig:
    """The encoder and decoder blocks every kind builds its networks from."""
    encoder: str = param("mlp", "mlp (one hidden layer, the seeds) | conv (two 4x4 stride-2 "
                                "convolutions, then an MLP; transposed convolutions back)")
    latent_dim: int = param(20, "size of z (each expert's, for moe_vae)")
    hidden: int = param(128, "width of each hidden layer of every MLP")
    conv_channels: int = param(32, "channels of the first conv layer (the second has twice as many)")
    activation: str = param("sigmoid", "sigmoid (the seeds) | relu | elu | tanh")
    layers: int = param(1, "hidden layers of every MLP block (mlp encoder and decoder; the conv "
                           "blocks keep one)", added=True)
    gated: bool = param(False, "gated hidden layers, h = (W x + b) * sigmoid(V x + c), as the "
                               "300-300 MLP of the VampPrior and Exemplar VAE baselines (the "
                               "activation is then unused); mlp encoder only", added=True)
    shared_hidden: bool = param(False, "the experts share every hidden layer and each keeps only its "
                                       "encoder's output layer and decoder's input layer, so every "
                                       "image trains the hidden layers; expert kinds, mlp encoder "
                                       "only", added=True)

    # 60-80x the largest recipe in params/ (latent_dim 50, hidden 512, conv_channels 32):
    # no real run comes near them, a typo such as 1000000 is refused before a worker
    # allocates it. size.check_memory catches in-bounds sizes that multiply into too much.
    SIZE_LIMITS: ClassVar[Dict[str, int]] = {"latent_dim": 4096, "hidden": 32768, "conv_channels": 2048,
                                             "layers": 64}

    def __post_init__(self):
        check(self.encoder in ("mlp", "conv"), "encoder", self.encoder, "choose 'mlp' or 'conv'")
        check_sizes(self)
        check(self.encoder == "mlp" or (self.layers == 1 and not self.gated and not self.shared_hidden),
              "encoder", self.encoder, f"layers={self.layers}, gated={self.gated} and shared_hidden="
              f"{self.shared_hidden} shape the mlp blocks only; use encoder: mlp, or layers: 1 "
              f"and gated, shared_hidden: false")
        check(self.activation in ACTIVATION_MODULES, "activation", self.activation,
              f"choose one of {sorted(ACTIVATION_MODULES)}")


def mlp(sizes: Sequence[int], activation: str, batchnorm: bool = False, gated: bool = False,
        act_last: bool = False) -> nn.Sequential:
    """Linear layers with `activation` (after BatchNorm, if asked) between them, and after
    the last one too with act_last. gated: each such layer gives 2H units and Gate keeps
    a * sigmoid(g) of them. Acts on the last dimension of any (..., I) input."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        acted = act_last or i < len(sizes) - 2
        width = 2 * b if gated and acted else b
        layers.append(nn.Linear(a, width))
        if acted:
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(Gate() if gated else ACTIVATION_MODULES[activation]())
    return nn.Sequential(*layers)


def gate(y: torch.Tensor) -> torch.Tensor:
    """(..., 2H) = [a, g] -> (..., H) = a * sigmoid(g)."""
    a, g = y.chunk(2, dim=-1)
    return a * torch.sigmoid(g)


class Gate(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return gate(y)


class BatchedLinear(nn.Module):
    """K independent linear maps applied at once: (K, B, I) -> (K, B, O) by one bmm.

    Initialised like nn.Linear (uniform +-1/sqrt(I)) so a batched model and K separate
    nn.Linear models start from the same distribution. The weight is a (K, I, O) tensor
    either way; with shared_input (a first layer, fed the same (B, I) images by every
    expert) it is stored as (I, K, O) in memory, so the one (B, I) @ (I, K*O) GEMM reads it
    and writes its gradient in place instead of copying both (K, I, O) <-> (I, K*O) each
    step (about 5% of a default MoE-VAE training step on CPU; same numbers bit for bit).
    """

    def __init__(self, k: int, n_in: int, n_out: int, shared_input: bool = False):
        super().__init__()
        bound = 1.0 / math.sqrt(n_in)
        weight = torch.empty(k, n_in, n_out).uniform_(-bound, bound)
        if shared_input:  # same values, (I, K, O) memory behind the (K, I, O) shape (strides
            # set even where K = 1, so DDP finds the gradient's strides equal to the weight's)
            weight = torch.empty(n_in, k, n_out).permute(1, 0, 2).copy_(weight)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.empty(k, 1, n_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # shared input (B, I): one (B, I) @ (I, K*O) GEMM instead of K
            k, n_in, n_out = self.weight.shape
            w = self.weight.permute(1, 0, 2).reshape(n_in, k * n_out)  # a view if stored so
            y = (x @ w).view(x.shape[0], k, n_out).transpose(0, 1)  # (K, B, O)
            return y + self.bias
        return torch.baddbmm(self.bias, x, self.weight)  # (K, B, O)

    def one(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Expert k alone on (N, I) inputs -> (N, O)."""
        return torch.addmm(self.bias[k, 0], x, self.weight[k])


class BatchedMLP(nn.Module):
    """K MLPs with the same layer sizes, evaluated together with batched matmuls.

    gated: each hidden layer is a gated linear unit (Dauphin et al. 2017, the GatedDense of
    the VampPrior code): one BatchedLinear of width 2H gives [a, g] and h = a * sigmoid(g),
    with no other activation; the last layer stays linear.
    """

    def __init__(self, k: int, sizes: Sequence[int], activation: str, shared_input: bool = False,
                 gated: bool = False):
        """shared_input: the first layer is usually fed one (B, I) input for all K MLPs."""
        super().__init__()
        last = len(sizes) - 2
        self.layers = nn.ModuleList(BatchedLinear(k, a, 2 * b if gated and i < last else b,
                                                  shared_input and i == 0)
                                    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self.act = gate if gated else ACTIVATION_MODULES[activation]()

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


class SharedEncoder(nn.Module):
    """K encoders sharing their hidden layers (model.net.shared_hidden): the body maps
    (B, D) -> (B, H) once for all experts, and only the output layer is per expert:
    -> (K, B, O)."""

    def __init__(self, k: int, sizes: Sequence[int], activation: str, gated: bool):
        super().__init__()
        self.body = mlp(sizes[:-1], activation, gated=gated, act_last=True)
        self.head = BatchedLinear(k, sizes[-2], sizes[-1], shared_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def routed(self, x: torch.Tensor, packing) -> torch.Tensor:
        """(B, D) -> (K, C, O) for the pairs of a routing.Packing: the body once per image,
        the heads on the packed blocks."""
        return self.head(packing.pack(packing.pairs(self.body(x))))


class SharedDecoder(nn.Module):
    """K decoders sharing their hidden layers: only the input layer is per expert,
    (K, B, L) -> (K, B, H), then one body (K, B, H) -> (K, B, D) logits."""

    def __init__(self, k: int, sizes: Sequence[int], activation: str, gated: bool):
        super().__init__()
        self.head = BatchedLinear(k, sizes[0], 2 * sizes[1] if gated else sizes[1])
        self.act = Gate() if gated else ACTIVATION_MODULES[activation]()
        self.body = mlp(sizes[1:], activation, gated=gated)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.act(self.head(z)))

    def one(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Decoder k alone, (N, L) -> (N, D) logits."""
        return self.body(self.act(self.head.one(k, z)))

    def routed(self, z: torch.Tensor, packing) -> torch.Tensor:
        """(K, C, L) packed codes -> (A, D) logits, one row per pair of the routing.Packing:
        the heads on the blocks, the body on the real rows only (no padding)."""
        return self.body(packing.unpack(self.act(self.head(z))))


SIDE = 28  # conv blocks work on 28x28 images: two stride-2 layers give 7x7 maps


class ConvEncoder(nn.Module):
    """K encoders as in the MMD-VAE seed: conv 4x4/2 (c) -> conv 4x4/2 (2c) -> MLP.

    (B, 784) -> (B, K*c, 14, 14) -> (B, K*2c, 7, 7) -> (K, B, 2c*49) -> (K, B, O). The
    first conv sees the shared image, the second has groups=K, so expert k only ever
    reads its own channels: K independent encoders in two conv calls.
    """

    def __init__(self, k: int, channels: int, hidden: int, n_out: int, activation: str):
        super().__init__()
        c, act = channels, ACTIVATION_MODULES[activation]
        self.k, self.flat = k, 2 * c * (SIDE // 4) ** 2
        self.convs = nn.Sequential(nn.Conv2d(1, k * c, 4, 2, 1), act(),
                                   nn.Conv2d(k * c, k * 2 * c, 4, 2, 1, groups=k), act())
        self.head = BatchedMLP(k, [self.flat, hidden, n_out], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x.view(-1, 1, SIDE, SIDE))  # (B, K*2c, 7, 7)
        return self.head(h.view(x.shape[0], self.k, self.flat).transpose(0, 1))  # (K, B, O)


class ConvDecoder(nn.Module):
    """K decoders mirroring ConvEncoder: MLP -> (2c, 7, 7) -> deconv (c, 14, 14) -> deconv
    (1, 28, 28) logits, transposed convolutions with groups=K."""

    def __init__(self, k: int, channels: int, hidden: int, latent: int, activation: str):
        super().__init__()
        c = channels
        self.k, self.c = k, c
        self.head = BatchedMLP(k, [latent, hidden, 2 * c * (SIDE // 4) ** 2], activation)
        self.act = ACTIVATION_MODULES[activation]()
        self.up1 = nn.ConvTranspose2d(k * 2 * c, k * c, 4, 2, 1, groups=k)
        self.up2 = nn.ConvTranspose2d(k * c, k, 4, 2, 1, groups=k)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(K, B, L) -> (K, B, 784) logits."""
        b = z.shape[1]
        h = self.act(self.head(z)).transpose(0, 1).reshape(b, self.k * 2 * self.c, SIDE // 4, SIDE // 4)
        out = self.up2(self.act(self.up1(h)))  # (B, K, 28, 28)
        return out.view(b, self.k, SIDE * SIDE).transpose(0, 1)

    def one(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """Decoder k alone, (N, L) -> (N, 784), using group k's slice of each weight."""
        c = self.c
        h = self.act(self.head.one(k, z)).view(-1, 2 * c, SIDE // 4, SIDE // 4)
        h = self.act(F.conv_transpose2d(h, self.up1.weight[k * 2 * c:(k + 1) * 2 * c],
                                        self.up1.bias[k * c:(k + 1) * c], stride=2, padding=1))
        out = F.conv_transpose2d(h, self.up2.weight[k * c:(k + 1) * c], self.up2.bias[k:k + 1],
                                 stride=2, padding=1)
        return out.view(-1, SIDE * SIDE)


def encoder(k: int, cfg: NetConfig, n_pixels: int, n_out: int) -> nn.Module:
    """K encoders (B, D) -> (K, B, n_out) of the architecture `cfg.encoder` names."""
    if cfg.encoder == "conv":
        return ConvEncoder(k, cfg.conv_channels, cfg.hidden, n_out, cfg.activation)
    sizes = [n_pixels, *[cfg.hidden] * cfg.layers, n_out]
    if cfg.shared_hidden:
        return SharedEncoder(k, sizes, cfg.activation, cfg.gated)
    return BatchedMLP(k, sizes, cfg.activation, shared_input=True, gated=cfg.gated)


def decoder(k: int, cfg: NetConfig, n_pixels: int) -> nn.Module:
    """K decoders (K, B, L) -> (K, B, D) logits, with `.one(k, z)` for a single expert."""
    if cfg.encoder == "conv":
        return ConvDecoder(k, cfg.conv_channels, cfg.hidden, cfg.latent_dim, cfg.activation)
    sizes = [cfg.latent_dim, *[cfg.hidden] * cfg.layers, n_pixels]
    if cfg.shared_hidden:
        return SharedDecoder(k, sizes, cfg.activation, cfg.gated)
    return BatchedMLP(k, sizes, cfg.activation, gated=cfg.gated)
