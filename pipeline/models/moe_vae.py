"""Mixture-of-Experts VAE: a manager routes each image softly over K expert VAEs.

    p(k | x) = softmax(manager(x))                       (B, K)
    q_k(z | x) = N(mu_k(x), diag exp(logvar_k(x)))       (K, B, L)
    L_k(x) = KL(q_k(z|x) || N(0, I)) - E_q log p_k(x|z)  (K, B), one-sample estimate
    loss = mean_b sum_k p(k|x_b) L_k(x_b) + lambda * Var_k(sum_b p(k|x_b))

The balancing term (variance of expert usage over the batch, population variance, summed
over every DDP rank's batch) keeps the manager from collapsing onto one expert. All K
experts run in batched matmuls; see benchmarks/moe_step.py for the speed-up over a loop.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.losses import balancing_loss, kl_std_normal, log_normal, log_std_normal
from pipeline.models.base import GenerativeModel
from pipeline.models.blocks import BatchedMLP, mlp


class MoEVAE(GenerativeModel):
    def __init__(self, cfg: ModelConfig, n_pixels: int = 784):
        super().__init__(cfg, n_pixels)
        k, h, l = cfg.experts, cfg.hidden, cfg.latent_dim
        self.manager = mlp([n_pixels, h, k], cfg.activation)
        self.encoders = BatchedMLP(k, [n_pixels, h, 2 * l], cfg.activation)
        self.decoders = BatchedMLP(k, [l, h, n_pixels], cfg.activation)

    def encode(self, x: torch.Tensor):
        """(B, D) -> mu, logvar, each (K, B, L)."""
        return self.encoders(x).chunk(2, dim=-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(K, B, L) -> (K, B, D) logits."""
        return self.decoders(z)

    def cluster_probs(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.manager(x), dim=-1)  # (B, K)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        probs = self.cluster_probs(x)  # (B, K)
        mu, logvar = self.encode(x)  # (K, B, L)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        log_px_z = self.likelihood.log_prob(x, self.decode(z))  # (K, B)
        kl = kl_std_normal(mu, logvar)  # (K, B)
        expert_loss = kl - log_px_z  # (K, B): negative ELBO of each expert
        expected = (probs * expert_loss.t()).sum(1).mean()
        balancing = balancing_loss(probs)
        return {
            "loss": expected + self.cfg.balancing_weight * balancing,
            "expected_expert_loss": expected,
            "balancing_loss": balancing,
            "kl": (probs * kl.t()).sum(1).mean(),
        }

    @torch.no_grad()
    def sample_components(self, n: int) -> torch.Tensor:
        z = torch.randn(self.cfg.experts, n, self.cfg.latent_dim, device=self._device())
        return self.likelihood.mean(self.decode(z))  # (K, n, D)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        k = torch.randint(self.cfg.experts, (n,), device=self._device())  # pi uniform
        return self.sample_components(n)[k, torch.arange(n, device=k.device)]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        k = self.cluster_probs(x).argmax(-1)  # (B,)
        mu, _ = self.encode(x)
        logits = self.decode(mu)  # (K, B, D)
        return self.likelihood.mean(logits[k, torch.arange(x.shape[0], device=x.device)])

    @torch.no_grad()
    def log_importance_weights(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Proposal q(k, z | x) = p_manager(k | x) q_k(z | x); model p(x) = sum_k pi_k p_k(x)
        with pi uniform, so log w = log pi_k + log p(z) + log p_k(x|z) - log q(k|x) - log q_k(z|x).
        Only the sampled expert decodes each sample (a loop over experts, not K-fold work)."""
        b, s, k = x.shape[0], n_samples, self.cfg.experts
        log_q_k = F.log_softmax(self.manager(x), dim=-1)  # (B, K)
        mu, logvar = self.encode(x)  # (K, B, L)
        ks = torch.multinomial(log_q_k.exp(), s, replacement=True)  # (B, S)
        bs = torch.arange(b, device=x.device)[:, None].expand(b, s)  # (B, S)
        mu_s, logvar_s = mu[ks, bs], logvar[ks, bs]  # (B, S, L)
        z = mu_s + torch.exp(0.5 * logvar_s) * torch.randn_like(mu_s)
        log_w = (log_std_normal(z) - math.log(k)) - (log_q_k[bs, ks] + log_normal(z, mu_s, logvar_s))
        log_px_z = torch.empty_like(log_w)
        for e in range(k):
            m = ks == e
            if m.any():
                log_px_z[m] = self.likelihood.log_prob(x[bs[m]], self.decoders.one(e, z[m]))
        return log_w + log_px_z  # (B, S)

    def _device(self) -> torch.device:
        return self.manager[0].weight.device
