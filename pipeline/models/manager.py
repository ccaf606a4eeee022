"""The MoE-VAE's manager network and the label-free terms that can shape its choice.

    p(k|x)  = softmax(manager(x))                                (B, K)
    H(Y|X)  = mean_b H(p(.|x_b))          conditional entropy: low means confident choices
    H(Y)    = H(mean_b p(.|x_b))          marginal entropy over the global batch: high = balanced
    R_sat   = mean_b KL(p(.|x_b) || p(.|x_b + r_b))              self-augmentation (VAT)
              r_b = eps_b * g_b / |g_b|,  g = grad_d KL(p(.|x) || p(.|x + xi d)),  d ~ N(0, I)
              eps_b = eps, or eps * d_k(x_b) / median_b' d_k(x_b') with consistency_radius: knn
              (d_k: distance to the k-th nearest training image, IMSAT's adaptive radius)
    R_aug   = mean_b KL(p(.|x_b) || p(.|A_b x_b))     A_b a random small warp: rotation, scale,
              shift, and optionally slant (augment_shear) and stroke width (augment_stroke)
    manager_loss = entropy_weight * H(Y|X) - marginal_entropy_weight * H(Y)
                   + consistency_weight * R_sat + augment_weight * R_aug

With weights (lambda, mu * lambda, 1) this is IMSAT's objective (Hu et al., ICML 2017,
"Learning Discrete Representations via Information Maximizing Self-Augmented Training"),
here added to the MoE-VAE's expected expert loss. Every weight defaults to 0: the seeds'
manager (one hidden layer, no extra terms) stays one param file away.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.distributed import global_batch_sum
from pipeline.core.errors import check, positive_int
from pipeline.data.neighbours import knn_distances
from pipeline.core.schema import param
from pipeline.models.blocks import ACTIVATION_MODULES, ConvEncoder, NetConfig, encoder, mlp
from pipeline.models.size import check_sizes

VAT_XI = 10.0  # finite-difference step of the power iteration (IMSAT's value, L2 on [0,1] pixels)
# R_aug's warp: isotropic scale and shift drawn uniformly per image, within (rotation,
# slant and stroke width: the augment_* params)
AUG_SCALE, AUG_SHIFT_PX = 0.1, 2.0


@dataclass(frozen=True)
class ManagerConfig:
    """The manager's network and the label-free terms that shape its choice (all 0: the seeds')."""
    encoder: Optional[str] = param(None, "mlp | conv; null = model.net.encoder")
    hidden: Any = param(None, "list of hidden widths, e.g. [1200, 1200]; null = [model.net.hidden]")
    activation: Optional[str] = param(None, "null = model.net.activation")
    batchnorm: bool = param(False, "BatchNorm after each hidden layer (with `hidden` only)")
    input: str = param("sample", "sample: what the experts model | grey: the grey pixels "
                                 "(needs model.likelihood.name: bernoulli)")
    entropy_weight: float = param(0.0, "weight of H(k|x): confident choices (IMSAT)")
    marginal_entropy_weight: float = param(0.0, "weight of -H(k): balanced choices over the batch (IMSAT)")
    consistency_weight: float = param(0.0, "weight of KL(p(k|x) || p(k|x + r_adv)), VAT (IMSAT)")
    consistency_eps: float = param(1.5, "L2 norm of the adversarial perturbation r_adv (knn: that "
                                        "of an image at the median neighbour distance)")
    consistency_radius: str = param("fixed", "fixed: every image's r_adv has norm consistency_eps | "
                                             "knn: scaled per image by its distance to its k-th "
                                             "nearest training image over the median one (IMSAT)")
    consistency_knn: int = param(10, "k of consistency_radius: knn (IMSAT: 10)")
    deskew: bool = param(False, "the network reads each image deskewed: sheared upright by its "
                                "ink's second moments and centred on its centre of mass")
    augment_weight: float = param(0.0, "weight of KL(p(k|x) || p(k|random warp of x))")
    augment_from: int = param(0, "the augment term joins after this many epochs (0: from the first; "
                                 "N: IMSAT's terms form the clusters, then the warps tidy their "
                                 "borders)", added=True)
    augment_rotate: float = param(12.0, "the warp's rotation, uniform in +-this many degrees")
    augment_shear: float = param(0.0, "the warp's slant: x' = x + s y, s uniform in +-this "
                                      "(0: none; 0.3 slants up to about 17 degrees)")
    augment_stroke: float = param(0.0, "the warp's stroke width: blend t of the image's 3x3 "
                                       "dilation (t > 0) or erosion (t < 0), t uniform in "
                                       "+-this, at most 1 (0: none)")

    # the widths: as model.net.hidden's bound (IMSAT's 1200 is the widest recipe); the
    # depth: 32x IMSAT's two layers
    SIZE_LIMITS: ClassVar[Dict[str, int]] = {"hidden": NetConfig.SIZE_LIMITS["hidden"]}
    MAX_LAYERS: ClassVar[int] = 64

    def __post_init__(self):
        widths = self.hidden
        check(widths is None or (isinstance(widths, (list, tuple)) and 0 < len(widths) <= self.MAX_LAYERS
                                 and all(positive_int(w) for w in widths)),
              "hidden", widths, f"use null or a list of 1 to {self.MAX_LAYERS} integers >= 1")
        if widths is not None:
            object.__setattr__(self, "hidden", tuple(widths))
        check_sizes(self)
        check(self.encoder in (None, "mlp", "conv"), "encoder", self.encoder,
              "use null (= model.net.encoder), 'mlp' or 'conv'")
        check(self.activation is None or self.activation in ACTIVATION_MODULES, "activation",
              self.activation, f"use null or one of {sorted(ACTIVATION_MODULES)}")
        for key in ("entropy_weight", "marginal_entropy_weight", "consistency_weight", "augment_weight",
                    "augment_rotate", "augment_shear"):
            value = getattr(self, key)
            check(math.isfinite(value) and value >= 0, key, value, "use a number >= 0")
        check(isinstance(self.augment_from, int) and self.augment_from >= 0, "augment_from",
              self.augment_from, "use an integer >= 0 (0: from the first epoch)")
        check(0 <= self.augment_stroke <= 1, "augment_stroke", self.augment_stroke,
              "use a number in [0, 1] (1: up to a full 3x3 dilation or erosion)")
        check(math.isfinite(self.consistency_eps) and self.consistency_eps > 0, "consistency_eps",
              self.consistency_eps, "use a number > 0")
        check(self.consistency_radius in ("fixed", "knn"), "consistency_radius",
              self.consistency_radius, "use fixed or knn")
        check(positive_int(self.consistency_knn), "consistency_knn", self.consistency_knn,
              "use an integer >= 1")
        check(self.input in ("sample", "grey"), "input", self.input,
              "use 'sample' (the manager reads what the experts model) or 'grey'")


class ManagerMLP(nn.Module):
    """blocks.mlp (optionally with BatchNorm) as (B, D) -> (1, B, K), like the encoders."""

    def __init__(self, sizes: Sequence[int], activation: str, batchnorm: bool):
        super().__init__()
        self.net = mlp(sizes, activation, batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[None]


class Deskew(nn.Module):
    """(B, side*side) -> (B, side*side): each image sheared so its ink's principal axis is
    vertical and shifted so its centre of mass is the image centre (the classic MNIST
    deskew). With pixel coordinates (r, c) centred on the image, m the ink's mean and
    alpha = cov(r, c) / var(r), output (r, c) samples the input at
    (r + m_r, c + alpha r + m_c). Differentiable in x (VAT's gradient passes through)."""

    def __init__(self, side: int = 28):
        super().__init__()
        self.side = side
        pos = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2)  # pixel centres
        self.register_buffer("pos", pos, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], self.side
        img = x.view(b, n, n).clamp_min(0)
        ink = img.sum((1, 2)).clamp_min(1e-6)  # (B,)
        p_r, p_c = img.sum(2) / ink[:, None], img.sum(1) / ink[:, None]  # (B, side) marginals
        m_r, m_c = (p_r * self.pos).sum(1), (p_c * self.pos).sum(1)  # (B,) centre of mass
        dr, dc = self.pos - m_r[:, None], self.pos - m_c[:, None]  # (B, side)
        var_r = (p_r * dr ** 2).sum(1).clamp_min(1e-6)
        cov = (img * dr[:, :, None] * dc[:, None, :]).sum((1, 2)) / ink
        alpha, half = cov / var_r, n / 2  # affine_grid units: a pixel is 1 / half
        one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
        theta = torch.stack([torch.stack([one, alpha, m_c / half], 1),  # x (column) row
                             torch.stack([zero, one, m_r / half], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, [b, 1, n, n], align_corners=False)
        return F.grid_sample(x.view(b, 1, n, n), grid, align_corners=False).view(b, -1)


def build_manager(cfg: ManagerConfig, net: NetConfig, experts: int, n_pixels: int) -> nn.Module:
    """(B, D) -> (1, B, K) logits. By default the seeds' manager: the experts' block type
    (net.encoder) with its `net.layers` hidden layers of `net.hidden`; the manager.* params
    change it."""
    if cfg.deskew:
        return nn.Sequential(Deskew(), build_manager(replace(cfg, deskew=False), net, experts, n_pixels))
    act = cfg.activation or net.activation
    widths = list(cfg.hidden or [net.hidden])
    if (cfg.encoder or net.encoder) == "conv":  # convs, then an MLP head of widths[0]
        return ConvEncoder(1, net.conv_channels, widths[0], experts, act)
    if cfg.hidden is None and act == net.activation and not cfg.batchnorm:
        return encoder(1, net, n_pixels, experts)
    return ManagerMLP([n_pixels, *widths, experts], act, cfg.batchnorm)


def check_manager_input(cfg: ManagerConfig, likelihood: str, key: str) -> None:
    """A grey manager input is defined beside a binarized sample only."""
    check(cfg.input == "sample" or likelihood == "bernoulli", key, cfg.input, "a grey manager input "
          "needs model.likelihood.name: bernoulli (otherwise sample is grey); use 'sample'")


def balancing_loss(probs: torch.Tensor) -> torch.Tensor:
    """Var_k(sum_b p_k(x_b)): population variance over experts of the summed manager
    probabilities (B, K) of the global batch. Zero iff every expert gets the same mass."""
    usage = global_batch_sum(probs)  # (K,)
    return usage.var(unbiased=False)


def conditional_entropy(logits: torch.Tensor) -> torch.Tensor:
    """mean_b H(softmax(logits_b)) for (B, K) logits."""
    log_p = F.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def marginal_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H(mean_b p_b) over the global batch (all DDP ranks), differentiably."""
    usage = global_batch_sum(probs)  # (K,)
    p_bar = usage / usage.sum()
    return -(p_bar * torch.log(p_bar.clamp_min(1e-12))).sum()


def _kl_from(log_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """mean_b KL(p_b || q_b) with p fixed (detached log-probs) and q = softmax(logits_q)."""
    return (log_p.exp() * (log_p - F.log_softmax(logits_q, -1))).sum(-1).mean()


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (d.dim() - 1))


def vat_loss(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
             log_p: torch.Tensor, eps) -> torch.Tensor:
    """Virtual adversarial loss of logits-function f at x (B, D), with log_p the detached
    log p(.|x): one power iteration finds the direction r (|r| = eps, a float or one per
    image, (B,)) that changes p(.|x) the most; the loss is KL(p(x) || p(x + r))."""
    with torch.enable_grad():  # the power iteration needs a gradient, also in no_grad scoring
        d = (VAT_XI * _unit(torch.randn_like(x))).requires_grad_()
        grad, = torch.autograd.grad(_kl_from(log_p, f(x + d)), d)
    if torch.is_tensor(eps):
        eps = eps.view(-1, *[1] * (x.dim() - 1))
    return _kl_from(log_p, f(x + eps * _unit(grad)))


def radius_from(distances: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) each image's distance to its k-th neighbour over the median of those distances
    (`distances`: (N, >= k) from knn_distances): 1 for a typical image, less in dense
    regions. IMSAT sets each image's VAT radius this way (its 10th neighbour), so a
    perturbation stays inside the image's own neighbourhood."""
    d = distances[:, k - 1]
    return d / d.median().clamp_min(1e-12)


def knn_radius(pixels: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(N,) radius_from(knn_distances(pixels, k), k): computed here, not read from the cache."""
    return radius_from(knn_distances(pixels, k, chunk), k)


def random_affine(x: torch.Tensor, side: int = 28, rotate: float = 12.0, shear: float = 0.0,
                  stroke: float = 0.0) -> torch.Tensor:
    """(B, side*side) images, each warped by its own random draw: rotation (+-rotate degrees),
    scale, shift, and with shear > 0 a slant, with stroke > 0 a thinner or bolder stroke.
    The sampling grid maps output to input points p = R(angle) [[1, s], [0, 1]] p' / scale + t."""
    b = x.shape[0]
    u = torch.rand(b, 4, device=x.device) * 2 - 1  # (B, 4) in [-1, 1]
    angle, scale = u[:, 0] * math.radians(rotate), 1 + u[:, 1] * AUG_SCALE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    s = (torch.rand(b, device=x.device) * 2 - 1) * shear if shear > 0 else torch.zeros_like(cos)
    shift = u[:, 2:] * AUG_SHIFT_PX * 2 / side  # pixels -> affine_grid's [-1, 1] units
    theta = torch.stack([torch.stack([cos, cos * s - sin, shift[:, 0]], 1),
                         torch.stack([sin, sin * s + cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, [b, 1, side, side], align_corners=False)
    out = F.grid_sample(x.view(b, 1, side, side), grid, align_corners=False)
    if stroke > 0:  # x + t (dilate(x) - x) for t > 0, x + |t| (erode(x) - x) for t < 0
        t = ((torch.rand(b, device=x.device) * 2 - 1) * stroke).view(b, 1, 1, 1)
        dilated = F.max_pool2d(out, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-out, 3, stride=1, padding=1)
        out = out + t.clamp_min(0) * (dilated - out) + (-t).clamp_min(0) * (eroded - out)
    return out.view(b, -1)


def wants_radius(cfg: ManagerConfig) -> bool:
    """Whether training passes each image's knn_radius to forward (consistency_radius: knn)."""
    return cfg.consistency_weight > 0 and cfg.consistency_radius == "knn"


def manager_terms(cfg: ManagerConfig, f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  logits: torch.Tensor, probs: torch.Tensor,
                  radius: Optional[torch.Tensor] = None, augment: bool = True) -> dict:
    """The weighted manager terms that are switched on, and their sum under 'manager_loss'.
    augment: False leaves the augment term out (the first cfg.augment_from epochs).
    radius: (B,) the images' knn_radius (training with consistency_radius: knn); None
    gives every image the radius consistency_eps (also where knn is set: scoring, tests)."""
    parts, total = {}, torch.zeros((), device=x.device)
    target = F.log_softmax(logits.detach(), -1)  # the choice both consistency terms keep
    if cfg.entropy_weight > 0:
        parts["conditional_entropy"] = conditional_entropy(logits)
        total = total + cfg.entropy_weight * parts["conditional_entropy"]
    if cfg.marginal_entropy_weight > 0:
        parts["marginal_entropy"] = marginal_entropy(probs)
        total = total - cfg.marginal_entropy_weight * parts["marginal_entropy"]
    if cfg.consistency_weight > 0:
        eps = cfg.consistency_eps if radius is None else cfg.consistency_eps * radius
        parts["consistency"] = vat_loss(f, x, target, eps)
        total = total + cfg.consistency_weight * parts["consistency"]
    if cfg.augment_weight > 0 and augment:
        warped = random_affine(x, rotate=cfg.augment_rotate, shear=cfg.augment_shear,
                               stroke=cfg.augment_stroke)
        parts["augment_consistency"] = _kl_from(target, f(warped))
        total = total + cfg.augment_weight * parts["augment_consistency"]
    if parts:
        parts["manager_loss"] = total
    return parts
