"""The standard VAE (Kingma & Welling 2014), and the base of the other one-latent kinds.

    q(z | x) = N(mu(x), diag exp(logvar(x)))      p(z) = prior (N(0, I) here)
    loss = mean_b [ -log p(x_b | z_b) + KL(q(z | x_b) || p(z)) ],  z_b ~ q(z | x_b)

With model.vae.importance_samples = S > 1 the loss is instead the IWAE bound (Burda et al.,
ICLR 2016), tighter than the ELBO the larger S (at S = 1 it is a one-sample ELBO estimate,
so S = 1 keeps the closed-form loss above):

    log w_s = log p(z_s) + log p(x | z_s) - log q(z_s | x),   z_1..S ~ q(z | x)
    loss = -mean_b [ logsumexp_s log w_s - log S ]

Subclasses change only what differs: `kl` and the prior (gmm_vae), or the whole
regulariser (mmd_vae). Encoder and decoder come from blocks (K = 1), `mlp` or `conv`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict

import torch

from pipeline.core.schema import param
from pipeline.models.base import GenerativeModel, Kind
from pipeline.models.blocks import decoder, encoder
from pipeline.models.distributions import kl_std_normal, log_normal, log_std_normal
from pipeline.models.size import check_sizes


@dataclass(frozen=True)
class VAEConfig:
    """The standard VAE."""
    importance_samples: int = param(1, "S > 1: train on the IWAE bound with S samples; 1 = the ELBO")

    # 200x the largest recipe (vae_iwae5), 20x the IWAE paper's largest k = 50: each sample
    # is a (B, 784) decode per step
    SIZE_LIMITS: ClassVar[Dict[str, int]] = {"importance_samples": 1000}

    def __post_init__(self):
        check_sizes(self)


class VAE(GenerativeModel):
    code_factor = 2  # the encoder emits (mu, logvar)

    def __init__(self, cfg, n_pixels: int = 784):
        super().__init__(cfg, n_pixels)
        self.encoder = encoder(1, self.net, n_pixels, self.code_factor * self.net.latent_dim)
        self.decoder = decoder(1, self.net, n_pixels)

    # -- the prior: N(0, I); gmm_vae swaps these three -------------------------------
    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """(..., L) -> (...) log p(z)."""
        return log_std_normal(z)

    def prior_sample(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.net.latent_dim, device=self._device())  # (n, L)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B,) KL(q(z|x) || p(z)); closed form for the standard normal prior."""
        return kl_std_normal(mu, logvar)

    # -- the interface ----------------------------------------------------------------
    def encode(self, x: torch.Tensor):
        """(B, D) -> mu, logvar, each (B, L)."""
        return self.encoder(x)[0].chunk(2, dim=-1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, L) -> (N, D) logits."""
        return self.decoder(z[None])[0]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.spec.importance_samples > 1:
            return self.iwae_loss(x)
        mu, logvar = self.encode(x)  # (B, L)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        recon = -self.likelihood.log_prob(x, self.decode(z))  # (B,)
        kl = self.kl(mu, logvar, z)  # (B,)
        return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean()}

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.likelihood.mean(self.decode(self.prior_sample(n)))

    @torch.no_grad()
    def sample_components(self, n: int) -> torch.Tensor:
        return self.sample(n)[None]  # one prior component: (1, n, D)

    @torch.no_grad()
    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decode(self.latent_mean(x)))

    @torch.no_grad()
    def morph(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
        z_a, z_b = self.latent_mean(x_a), self.latent_mean(x_b)  # (P, L)
        t = torch.linspace(0, 1, steps, device=z_a.device)[None, :, None]  # (1, steps, 1)
        z = (1 - t) * z_a[:, None] + t * z_b[:, None]  # (P, steps, L)
        return self.likelihood.mean(self.decode(z.flatten(0, 1))).view(len(z), steps, -1)

    def iwae_loss(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """-(IWAE bound with S = model.vae.importance_samples). Its gradient is that of each
        sample's log w_s weighted by w_s / sum_s w_s; the ELBO's weights them equally."""
        s = self.spec.importance_samples
        bound = torch.logsumexp(self.log_weights(x, s), dim=1) - math.log(s)  # (B,)
        return {"loss": -bound.mean(), "iwae_bound": bound.mean()}

    @torch.no_grad()
    def log_importance_weights(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        return self.log_weights(x, n_samples)

    def log_weights(self, x: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Proposal q(z | x) = N(mu, diag exp(logvar)) from `encode`, reparameterised:
        log w = log p(z) + log p(x | z) - log q(z | x), z ~ q; (B, S)."""
        mu, logvar = (t[:, None] for t in self.encode(x))  # (B, 1, L)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(
            x.shape[0], n_samples, mu.shape[-1], device=x.device)  # (B, S, L)
        logits = self.decode(z.flatten(0, 1)).view(x.shape[0], n_samples, -1)  # (B, S, D)
        log_px_z = self.likelihood.log_prob(x[:, None], logits)  # (B, S)
        return self.log_prior(z) + log_px_z - log_normal(z, mu, logvar)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


KIND = Kind("vae", VAEConfig, VAE)
