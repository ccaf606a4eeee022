"""The MMD-VAE's divergence (issue 20): kernels and MMD against hand computations, and the
fault the IMQ kernel fixes (a code far outside the prior gets no pull from a Gaussian kernel)."""
import math

import pytest
import torch

from pipeline.core.errors import ConfigError
from pipeline.models.kinds.mmd_vae import IMQ_SCALES, KERNELS, imq_kernel, mmd
from pipeline.models.registry import build_model, model_config


def test_imq_kernel_matches_its_formula():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])  # d^2 = 5, L = 2, C = 4
    hand = sum(4 * s / (4 * s + 5) for s in IMQ_SCALES) / 7
    assert imq_kernel(a, b).item() == pytest.approx(hand)
    assert imq_kernel(b, b).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_mmd_is_the_v_statistic_by_hand(name):
    """Two 2-point sets in 1-d: mean over all 4 pairs of each block, diagonal included."""
    z, p = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [3.0]])
    k = lambda d2: (math.exp(-d2) if name == "gaussian"  # L = 1
                    else sum(2 * s / (2 * s + d2) for s in IMQ_SCALES) / 7)
    zz = (2 * k(0) + 2 * k(1)) / 4
    pp = (2 * k(0) + 2 * k(9)) / 4
    zp = (k(0) + k(9) + k(1) + k(4)) / 4
    assert mmd(z, p, KERNELS[name]).item() == pytest.approx(zz + pp - 2 * zp, rel=1e-6)
    assert mmd(z, z, KERNELS[name]).abs().item() < 1e-6


@pytest.mark.parametrize("name, returns", [("imq", True), ("gaussian", False)])
def test_a_far_code_is_pulled_back_by_imq_only(name, returns):
    """The issue-20 fault in miniature: one code at norm 30 beside 99 prior-like codes in
    20-d, moved by Adam (the trainer's optimiser) on 1000 * MMD^2. The Gaussian kernel's
    gradient there is ~1e-20, below Adam's eps, so the code stays; IMQ brings it to the
    prior's shell (norm ~ sqrt(20) = 4.5)."""
    torch.manual_seed(0)
    near = torch.randn(99, 20)
    far = torch.zeros(1, 20)
    far[0, 0] = 30.0
    far.requires_grad_(True)
    opt = torch.optim.Adam([far], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        (1000 * mmd(torch.cat([far, near]), torch.randn(100, 20), KERNELS[name])).backward()
        opt.step()
    norm = far.norm().item()
    assert (norm < 8) if returns else (norm > 29.9), norm


def test_the_loss_uses_the_configured_kernel_and_imq_is_the_default():
    x = torch.bernoulli(torch.full((16, 784), 0.3), generator=torch.Generator().manual_seed(0))
    parts = {}
    for name in ("imq", "gaussian"):
        cfg = model_config({"kind": "mmd_vae", "net.latent_dim": 4, "net.hidden": 16,
                            "likelihood.name": "bernoulli", "mmd_vae.kernel": name})
        torch.manual_seed(0)
        model = build_model(cfg)
        z = model.latent_mean(x)
        torch.manual_seed(1)
        parts[name] = model(x)
        torch.manual_seed(1)
        prior = torch.randn_like(z)
        assert parts[name]["mmd"].item() == pytest.approx(mmd(z, prior, KERNELS[name]).item(), rel=1e-5)
        torch.testing.assert_close(parts[name]["loss"], parts[name]["recon"] + 1000.0 * parts[name]["mmd"])
    assert parts["imq"]["mmd"].item() != pytest.approx(parts["gaussian"]["mmd"].item())
    assert model_config({"kind": "mmd_vae"}).mmd_vae.kernel == "imq"


def test_an_unknown_kernel_is_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        model_config({"kind": "mmd_vae", "mmd_vae.kernel": "laplace"})
    assert "model.mmd_vae.kernel='laplace'" in str(e.value) and "\n" not in str(e.value)


def test_a_model_file_from_before_the_kernel_key_loads_with_the_gaussian_it_trained_with():
    from pipeline.models.checkpoint import model_from_state, model_state

    model = build_model(model_config({"kind": "mmd_vae", "net.latent_dim": 4, "net.hidden": 8}))
    state = model_state(model)
    assert model_from_state(state).cfg.mmd_vae.kernel == "imq"  # a file of today keeps its kernel
    old = {**state, "config": {**state["config"], "mmd_vae": {
        k: v for k, v in state["config"]["mmd_vae"].items() if k != "kernel"}}}
    loaded = model_from_state(old)
    assert loaded.cfg.mmd_vae.kernel == "gaussian"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
