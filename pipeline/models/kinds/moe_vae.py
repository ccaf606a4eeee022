"""Mixture-of-Experts VAE: a manager routes each image softly over K expert VAEs.

    p(k | x) = softmax(manager(x))                       (B, K)
    q_k(z | x) = N(mu_k(x), diag exp(logvar_k(x)))       (K, B, L)
    L_k(x) = KL(q_k(z|x) || N(0, I)) - E_q log p_k(x|z)  (K, B), one-sample estimate
    loss = mean_b sum_k p(k|x_b) L_k(x_b) + lambda * Var_k(sum_b p(k|x_b))
           (with model.moe_vae.top_k the sum runs over the top-k experts only; see routing.py)

The balancing term (variance of expert usage over the batch, population variance, summed
over every DDP rank's batch) keeps the manager from collapsing onto one expert. All K
experts run in batched matmuls (or grouped convolutions with model.net.encoder: conv); see
benchmarks/moe_step.py for the speed-up over a loop.

With model.moe_vae.manager_epochs: N the manager trains N epochs; then it stays fixed (eval
mode, no gradient, its terms not computed) while the experts go on under its choices: with
top_k: 1 a later epoch costs about one expert per image, so big experts can train long.

With model.moe_vae.expert_batch_scale: s those expert-only epochs step on s times as many
images at the same lr: each step updates every expert's weights, and with top-1 routing
each expert sees only about B / K images of a batch of B.

With model.moe_vae.kl_warmup_epochs: N the experts' KL term is weighed up from 1/N to 1 over
the first N epochs (beta * KL - log p(x|z), as the likelihood baselines train).

With model.moe_vae.manager.input: grey the manager (and its IMSAT terms) reads the grey image
while the experts model its binarization: x is then (B, 2, D) = (binarized, grey).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional

import torch
import torch.nn.functional as F

from pipeline.core.errors import check, positive_int
from pipeline.core.schema import param
from pipeline.models.base import GenerativeModel, Kind
from pipeline.models.blocks import decoder, encoder
from pipeline.models.distributions import kl_std_normal, log_normal, log_std_normal
from pipeline.models.manager import (ManagerConfig, balancing_loss, build_manager, check_manager_input,
                                     knn_radius, manager_terms, radius_from, wants_radius)
from pipeline.models.routing import Packing, on_blocks, routed_expert_loss
from pipeline.models.size import check_sizes


@dataclass(frozen=True)
class MoEVAEConfig:
    """Mixture-of-Experts VAE: a manager routes each image over K expert VAEs."""
    experts: int = param(10, "K, expert VAEs behind the manager")
    balancing_weight: float = param(0.1, "lambda in front of Var_k(sum_batch p(k|x))")
    top_k: Optional[int] = param(None, "null: every expert sees every image; k: each image's top-k only")
    warmup_epochs: int = param(0, "first N epochs: expert losses send no gradient to the manager")
    manager_epochs: Optional[int] = param(None, "null: the manager trains every epoch | N: only the "
                                                "first N, then it stays fixed while the experts go on")
    expert_batch_scale: int = param(1, "after manager_epochs: the experts step on train.batch_size x "
                                       "this many images at train.lr: fewer Adam steps over all "
                                       "K experts' weights; 1: unchanged")
    kl_warmup_epochs: int = param(0, "N: the experts' KL term weighs min(1, (epoch + 1) / N) in the "
                                     "loss for the first N epochs (the likelihood baselines' warm-up; "
                                     "the logged kl stays unweighted); 0: always 1", added=True)
    manager: ManagerConfig = param(factory=ManagerConfig, doc="the manager network and its terms")

    # 50-100x the recipes (10 to 20 experts, expert_batch_scale 5): a typo is refused before
    # a worker builds K expert VAEs, each of them with its own copy of every net size
    SIZE_LIMITS: ClassVar[Dict[str, int]] = {"experts": 1000, "expert_batch_scale": 500}

    def __post_init__(self):
        check_sizes(self)
        check(math.isfinite(self.balancing_weight) and self.balancing_weight >= 0, "balancing_weight",
              self.balancing_weight, "use a finite number >= 0")
        check(self.top_k is None or (positive_int(self.top_k) and self.top_k <= self.experts), "top_k",
              self.top_k, f"use null (dense) or an integer in 1..{self.experts} (experts)")
        check(isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0, "warmup_epochs",
              self.warmup_epochs, "use an integer >= 0 (0: no warm-up)")
        check(isinstance(self.kl_warmup_epochs, int) and self.kl_warmup_epochs >= 0, "kl_warmup_epochs",
              self.kl_warmup_epochs, "use an integer >= 0 (0: no KL warm-up)")
        check(self.manager_epochs is None or positive_int(self.manager_epochs), "manager_epochs",
              self.manager_epochs, "use null (the manager trains every epoch) or an integer >= 1")
        check(self.expert_batch_scale == 1 or self.manager_epochs is not None, "expert_batch_scale",
              self.expert_batch_scale, "it scales the batch once the manager is fixed; set "
                                       "model.moe_vae.manager_epochs too, or use 1")


class MoEVAE(GenerativeModel):
    has_clusters = True
    has_experts = True

    def __init__(self, cfg, n_pixels: int = 784):
        super().__init__(cfg, n_pixels)
        k, net = self.spec.experts, self.net
        self.manager = build_manager(self.spec.manager, net, k, n_pixels)  # (B, D) -> (1, B, K)
        self.encoders = encoder(k, net, n_pixels, 2 * net.latent_dim)
        self.decoders = decoder(k, net, n_pixels)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        # a bool, not the epoch, is what forward reads: torch.compile (train.compile) guards
        # on it, so a compiled step recompiles when the warm-up ends, not every epoch
        self.warming_up = epoch < getattr(self.spec, "warmup_epochs", 0)  # hmoe_vae: none
        self.manager_fixed = self.manager_fixed_at(epoch)
        self.augmenting = epoch >= self.spec.manager.augment_from
        ramp = getattr(self.spec, "kl_warmup_epochs", 0)  # hmoe_vae: none
        self.kl_weight = min(1.0, (epoch + 1) / ramp) if ramp else 1.0

    def manager_fixed_at(self, epoch: int) -> bool:
        """manager_epochs: from that epoch on, the manager is fixed and only the experts train."""
        last = getattr(self.spec, "manager_epochs", None)  # hmoe_vae: none
        return last is not None and epoch >= last

    def batch_scale(self, epoch: int) -> int:
        """expert_batch_scale once the manager is fixed: a top-1 step then costs about one
        small expert pass per image plus one Adam update of all K experts' weights, so larger
        batches cut the update's share (benchmarks/moe_step.py measures the step)."""
        return getattr(self.spec, "expert_batch_scale", 1) if self.manager_fixed_at(epoch) else 1

    @property
    def skips_parameters(self) -> bool:
        """manager_epochs: the fixed manager's parameters get no gradient, so DDP must
        look for unused parameters each step."""
        return getattr(self.spec, "manager_epochs", None) is not None

    def train(self, mode: bool = True):
        """A fixed manager stays in eval mode (batch norm statistics frozen too)."""
        super().train(mode)
        if mode and getattr(self, "manager_fixed", False):
            self.manager.eval()
        return self

    @classmethod
    def side_input(cls, cfg, pixels: torch.Tensor,
                   neighbours: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Each training image's VAT radius scale with consistency_radius: knn (hmoe_vae
        too), from the cached neighbour distances where they reach consistency_knn."""
        manager = cfg.spec.manager
        if not wants_radius(manager):
            return None
        k = manager.consistency_knn
        if neighbours is not None and neighbours.shape[1] >= k:
            return radius_from(neighbours, k)
        return knn_radius(pixels, k)

    @classmethod
    def side_key(cls, cfg) -> Optional[tuple]:
        manager = cfg.spec.manager
        return ("knn_radius", manager.consistency_knn) if wants_radius(manager) else None

    @classmethod
    def check_config(cls, cfg) -> None:
        spec = cfg.moe_vae
        check(spec.top_k is None or cfg.net.encoder == "mlp", "moe_vae.top_k", spec.top_k,
              "sparse routing runs MLP experts only; set model.net.encoder: mlp or "
              "model.moe_vae.top_k: null")
        check_manager_input(spec.manager, cfg.likelihood.name, "moe_vae.manager.input")

    @property
    def leaves(self) -> int:
        """E, the expert VAEs that decode (K here; K*J for hmoe_vae), in encode's order."""
        return self.spec.experts

    def manager_logits(self, x_manager: torch.Tensor) -> torch.Tensor:
        """(B, D) the manager's view of the images (see views) -> (B, K) logits."""
        return self.manager(x_manager)[0]

    def leaf_log_probs(self, x_manager: torch.Tensor) -> torch.Tensor:
        """(B, D) manager view -> (B, E) log q(e | x), the routing over the decoding experts."""
        return F.log_softmax(self.manager_logits(x_manager), dim=-1)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) the decoding expert of each image: here the manager's argmax."""
        return self.cluster_probs(x).argmax(-1)

    def prepare(self, grey: torch.Tensor, generator=None) -> torch.Tensor:
        x = self.likelihood.prepare(grey, generator=generator)
        return torch.stack([x, grey], 1) if self.spec.manager.input == "grey" else x  # (B, 2, D)

    def views(self, x: torch.Tensor):
        """Model input -> (what the experts model, what the manager reads), (B, D) each."""
        return (x[:, 0], x[:, 1]) if x.dim() == 3 else (x, x)

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        return self.views(x)[0]

    def encode(self, x: torch.Tensor):
        """(B, D) -> mu, logvar, each (K, B, L)."""
        return self.encoders(x).chunk(2, dim=-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(K, B, L) -> (K, B, D) logits."""
        return self.decoders(z)

    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.manager_logits(self.views(x)[1]), dim=-1)  # (B, K)

    def forward(self, x: torch.Tensor, radius: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        x, x_manager = self.views(x)
        fixed = self.training and self.manager_fixed  # after manager_epochs: experts only
        with torch.set_grad_enabled(torch.is_grad_enabled() and not fixed):
            logits = self.manager_logits(x_manager)  # (B, K)
        probs = F.softmax(logits, dim=-1)
        # warm-up: the expert losses send no gradient to the manager (it learns from its own terms)
        warmup = self.training and self.warming_up
        if self.spec.top_k:  # each expert on its own top-k images only (routing.py)
            gate = logits.detach() if warmup else logits
            expected, kl = routed_expert_loss(self, x, gate, self.spec.top_k)
        else:  # every expert on every image, weighted by p(k|x)
            expert_loss, kl_kb = self.expert_losses(x)  # (K, B) each
            weights = probs.detach() if warmup else probs
            expected = (weights * expert_loss.t()).sum(1).mean()
            kl = (weights * kl_kb.t()).sum(1).mean()
        balancing = balancing_loss(probs)
        if fixed:  # the manager's terms could not change it any more: not computed, not added
            return {"loss": expected, "expected_expert_loss": expected, "balancing_loss": balancing,
                    "kl": kl}
        extra = manager_terms(self.spec.manager, self.manager_logits, x_manager, logits, probs, radius,
                              augment=self.augmenting)
        return {
            "loss": expected + self.spec.balancing_weight * balancing + extra.get("manager_loss", 0.0),
            "expected_expert_loss": expected,
            "balancing_loss": balancing,
            "kl": kl,
            **extra,
        }

    def expert_losses(self, x: torch.Tensor, packing: Optional[Packing] = None):
        """x (B, D) shared by all experts, or (K, B, D) one block per expert -> each
        expert's negative ELBO L_k(x) and its KL term, (K, B) each (one-sample estimate).
        With `packing` (routing.py): x (B, D) -> those of its (image, expert) pairs, (A,) each."""
        if packing is None:
            return self._negative_elbo(x, *self.encode(x), self.decode)  # mu, logvar (K, B, L)
        if not self.net.shared_hidden:
            return on_blocks(self, x, packing)
        # the shared layers on the real rows only (B images, A pairs), the heads on the blocks
        mu, logvar = self.encoders.routed(x, packing).chunk(2, dim=-1)  # (K, C, L)
        return self._negative_elbo(packing.pairs(x), mu, logvar,
                                   lambda z: self.decoders.routed(z, packing), packing.unpack)

    def _negative_elbo(self, x, mu, logvar, decode, rows=None):
        """One z ~ q(z|x) per row of mu -> (kl_weight * KL(q || N(0, I)) - log p(x | z), KL),
        laid out as x; `rows` maps the KL from mu's layout to x's (blocks -> pairs)."""
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_px_z = self.likelihood.log_prob(x, decode(z))
        kl = kl_std_normal(mu, logvar) if rows is None else rows(kl_std_normal(mu, logvar))
        return (kl if self.kl_weight == 1.0 else self.kl_weight * kl) - log_px_z, kl

    @torch.no_grad()
    def sample_components(self, n: int) -> torch.Tensor:
        z = torch.randn(self.leaves, n, self.net.latent_dim, device=self._device())
        return self.likelihood.mean(self.decode(z))  # (E, n, D)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        k = torch.randint(self.leaves, (n,), device=self._device())  # pi uniform
        return self.sample_components(n)[k, torch.arange(n, device=k.device)]

    @torch.no_grad()
    def routed_code(self, x: torch.Tensor):
        """The routed expert k (B,) and that expert's posterior mean (B, L)."""
        k = self.route(x)
        return k, self.encode(self.pixels(x))[0][k, torch.arange(x.shape[0], device=x.device)]

    def decode_routed(self, k: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Expert k[n] decodes z[n]: (N,), (N, L) -> (N, D) logits, each expert once."""
        out = torch.empty(z.shape[0], self.n_pixels, device=z.device)
        for e in k.unique().tolist():
            m = k == e
            out[m] = self.decoders.one(e, z[m])
        return out

    @torch.no_grad()
    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.routed_code(x)[1]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decode_routed(*self.routed_code(x)))

    @torch.no_grad()
    def morph(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
        """The latent is (k, z): z moves on the straight line between the two codes and
        the decoding expert switches from x_a's to x_b's at the midpoint."""
        (k_a, z_a), (k_b, z_b) = self.routed_code(x_a), self.routed_code(x_b)
        t = torch.linspace(0, 1, steps, device=x_a.device)[None, :, None]  # (1, steps, 1)
        z = ((1 - t) * z_a[:, None] + t * z_b[:, None]).flatten(0, 1)  # (P*steps, L)
        k = torch.where(t[0, :, 0] < 0.5, k_a[:, None], k_b[:, None]).flatten()  # (P*steps,)
        return self.likelihood.mean(self.decode_routed(k, z)).view(len(x_a), steps, -1)

    @torch.no_grad()
    def log_importance_weights(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Proposal q(k, z | x) = p_manager(k | x) q_k(z | x); model p(x) = sum_k pi_k p_k(x)
        with pi uniform, so log w = log pi_k + log p(z) + log p_k(x|z) - log q(k|x) - log q_k(z|x).
        Only the sampled expert decodes each sample (a loop over experts, not K-fold work)."""
        b, s, k = x.shape[0], n_samples, self.leaves
        x, x_manager = self.views(x)
        log_q_k = self.leaf_log_probs(x_manager)  # (B, K), K = the decoding experts (leaves)
        mu, logvar = self.encode(x)  # (K, B, L)
        ks = torch.multinomial(log_q_k.exp(), s, replacement=True)  # (B, S)
        bs = torch.arange(b, device=x.device)[:, None].expand(b, s)  # (B, S)
        mu_s, logvar_s = mu[ks, bs], logvar[ks, bs]  # (B, S, L)
        z = mu_s + torch.exp(0.5 * logvar_s) * torch.randn_like(mu_s)
        log_w = (log_std_normal(z) - math.log(k)) - (log_q_k[bs, ks] + log_normal(z, mu_s, logvar_s))
        logits = self.decode_routed(ks.flatten(), z.flatten(0, 1)).view(b, s, -1)  # (B, S, D)
        return log_w + self.likelihood.log_prob(x[:, None], logits)  # (B, S)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


KIND = Kind("moe_vae", MoEVAEConfig, MoEVAE)
