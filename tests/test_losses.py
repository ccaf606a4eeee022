"""The MoE-VAE loss against a hand computation, and the pieces it is made of."""
import math

import pytest
import torch

from pipeline.models.distributions import Bernoulli, Gaussian, kl_std_normal, log_normal
from pipeline.models.manager import balancing_loss
from pipeline.models.kinds.moe_vae import MoEVAE
from tests.conftest import model_cfg


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_moe_loss_matches_hand_computation():
    K, B, L, H, D, lam, std = 2, 3, 2, 3, 5, 0.7, 0.5
    torch.manual_seed(0)
    cfg = model_cfg(experts=K, latent_dim=L, hidden=H, balancing_weight=lam, gaussian_std=std)
    model = MoEVAE(cfg, n_pixels=D)
    x = torch.rand(B, D)
    torch.manual_seed(123)
    out = model(x)
    torch.manual_seed(123)
    eps = torch.randn(K, B, L).tolist()  # forward draws exactly this noise

    p = torch.softmax(model.manager_logits(x), -1).tolist()
    e1, e2 = model.encoders.layers
    d1, d2 = model.decoders.layers
    W = lambda layer, k: (layer.weight[k].tolist(), layer.bias[k, 0].tolist())  # noqa: E731

    def affine(v, wb, act):
        w, b = wb
        o = [sum(v[i] * w[i][j] for i in range(len(v))) + b[j] for j in range(len(b))]
        return [sig(t) for t in o] if act else o

    expected, usage = 0.0, [0.0] * K
    for b in range(B):
        xb = x[b].tolist()
        for k in range(K):
            enc = affine(affine(xb, W(e1, k), True), W(e2, k), False)
            mu, logvar = enc[:L], enc[L:]
            z = [mu[i] + math.exp(0.5 * logvar[i]) * eps[k][b][i] for i in range(L)]
            mean = [sig(t) for t in affine(affine(z, W(d1, k), True), W(d2, k), False)]
            log_px = sum(-0.5 * math.log(2 * math.pi) - math.log(std)
                         - (xb[d] - mean[d]) ** 2 / (2 * std ** 2) for d in range(D))
            kl = 0.5 * sum(mu[i] ** 2 + math.exp(logvar[i]) - 1 - logvar[i] for i in range(L))
            expected += p[b][k] * (kl - log_px) / B
            usage[k] += p[b][k]
    mean_usage = sum(usage) / K
    balancing = sum((u - mean_usage) ** 2 for u in usage) / K
    assert out["expected_expert_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["balancing_loss"].item() == pytest.approx(balancing, rel=1e-5, abs=1e-7)
    assert out["loss"].item() == pytest.approx(expected + lam * balancing, rel=1e-5)


def test_balancing_known_values():
    assert balancing_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(1.0)
    assert balancing_loss(torch.full((4, 5), 0.2)).item() == pytest.approx(0.0, abs=1e-12)


def test_likelihoods_known_values():
    x = torch.tensor([1.0, 0.0])
    logits = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5 and 0.75
    assert Bernoulli().log_prob(x, logits).item() == pytest.approx(math.log(0.5) + math.log(0.25))
    g = Gaussian(0.5).log_prob(torch.tensor([0.5]), torch.tensor([0.0])).item()
    assert g == pytest.approx(-0.5 * math.log(2 * math.pi) - math.log(0.5))


def test_kl_and_log_normal_agree_with_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    q = Normal(mu, torch.exp(0.5 * logvar))
    ref = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_std_normal(mu, logvar), ref)
    z = torch.randn(4, 3)
    torch.testing.assert_close(log_normal(z, mu, logvar), q.log_prob(z).sum(-1))


def test_mmd_of_identical_samples_is_zero_and_grows_with_a_shift():
    from pipeline.models.kinds.mmd_vae import gaussian_kernel, mmd

    torch.manual_seed(0)
    z = torch.randn(200, 8)
    assert mmd(z, z, gaussian_kernel).abs().item() < 1e-5
    assert gaussian_kernel(z, z).diagonal().allclose(torch.ones(200))
    near = mmd(z, torch.randn(200, 8), gaussian_kernel)
    far = mmd(z, torch.randn(200, 8) + 2.0, gaussian_kernel)
    assert 0 <= near < 0.05 < far


def test_mmd_kernel_matches_its_formula():
    from pipeline.models.kinds.mmd_vae import gaussian_kernel

    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    assert gaussian_kernel(a, b).item() == pytest.approx(math.exp(-5 / 2))


def test_monte_carlo_kl_matches_the_closed_form_for_one_component():
    """gmm_vae's one-sample KL estimate log q(z|x) - log p(z), averaged, against the
    analytic KL between two diagonal Gaussians (a one-component mixture)."""
    from pipeline.models.registry import build_model

    torch.manual_seed(0)
    model = build_model(model_cfg(kind="gmm_vae", components=1, latent_dim=3))
    with torch.no_grad():
        model.prior.means.copy_(torch.tensor([[0.5, -1.0, 0.0]]))
        model.prior.logvars.copy_(torch.tensor([[0.3, -0.2, 0.1]]))
    mu, logvar = torch.tensor([0.2, 0.1, -0.4]), torch.tensor([-0.5, 0.4, 0.0])
    z = mu + torch.exp(0.5 * logvar) * torch.randn(400_000, 3)
    mc = model.kl(mu.expand_as(z), logvar.expand_as(z), z).mean()
    m, lv = model.prior.means[0], model.prior.logvars[0]
    exact = 0.5 * (lv - logvar + (torch.exp(logvar) + (mu - m) ** 2) / torch.exp(lv) - 1).sum()
    assert mc.item() == pytest.approx(exact.item(), abs=0.01)
    std = build_model(model_cfg(kind="vae", latent_dim=3))  # the analytic KL it replaces
    with torch.no_grad():
        model.prior.means.zero_()
        model.prior.logvars.zero_()
    mc0 = model.kl(mu.expand_as(z), logvar.expand_as(z), z).mean()
    assert mc0.item() == pytest.approx(std.kl(mu, logvar, mu).item(), abs=0.01)
