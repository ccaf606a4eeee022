"""The hierarchical MoE-VAE: its loss against a hand computation, shapes, the reductions
to moe_vae at J = 1 and K = 1, that both balancing terms keep every sub-expert in use,
log p(x) over (k, j, z), and the second level's evaluation outputs."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import ConfigError
from pipeline.data.load import load_split
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.hierarchy import explained, shape_stats
from pipeline.evaluation.likelihood import iw_log_likelihood
from pipeline.evaluation.run import evaluate_stage
from pipeline.models.checkpoint import save_model
from pipeline.models.kinds.hmoe_vae import HMoEVAE
from pipeline.models.registry import build_model, model_config
from pipeline.training.loop import train_epoch

NET = {"net.latent_dim": 4, "net.hidden": 32}
IMSAT = {"entropy_weight": 1.0, "marginal_entropy_weight": 2.0, "augment_weight": 3.0}


def hmoe(k, j, **over):
    return build_model(model_config({"kind": "hmoe_vae", "hmoe_vae.experts": k, "hmoe_vae.sub_experts": j,
                                     "likelihood.name": "bernoulli", **NET, **over}))


def moe(k, **over):
    return build_model(model_config({"kind": "moe_vae", "moe_vae.experts": k, "likelihood.name": "bernoulli",
                                     **NET, **over}))


class Const(nn.Module):
    """A stand-in manager: the same (1 or K, B, O) logits whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_loss_matches_a_hand_computation():
    """K = 2, J = 2, B = 2 with fixed routing and fixed sub-expert losses L_kj(x_b)."""
    model = hmoe(2, 2, **{"hmoe_vae.balancing_weight": 0.5, "hmoe_vae.sub_balancing_weight": 2.0})
    p_k = torch.tensor([[0.75, 0.25], [0.5, 0.5]])  # (B, K)
    p_j = torch.tensor([[[0.8, 0.2], [0.5, 0.5]],  # image 0: p(j|x,k=0), p(j|x,k=1)
                        [[0.4, 0.6], [0.1, 0.9]]])  # image 1, (B, K, J)
    model.manager = Const(p_k.log()[None])  # (1, B, K)
    model.sub_managers = Const(p_j.log().transpose(0, 1))  # (K, B, J)
    leaf = torch.tensor([[10., 20.], [30., 40.], [50., 60.], [70., 80.]])  # (K*J, B), leaf k*J+j
    model.expert_losses = lambda x: (leaf, leaf / 10)
    out = model(torch.zeros(2, 784))
    # image 0: .75(.8*10 + .2*30) + .25(.5*50 + .5*70) = 10.5 + 15 = 25.5
    # image 1: .5(.4*20 + .6*40) + .5(.1*60 + .9*80) = 16 + 39 = 55
    expected = (25.5 + 55) / 2
    # usage_k = (1.25, 0.75): Var = 0.0625
    # u_0j = (.75*.8 + .5*.4, .75*.2 + .5*.6) = (.8, .45): Var = .030625
    # u_1j = (.25*.5 + .5*.1, .25*.5 + .5*.9) = (.175, .575): Var = .04
    torch.testing.assert_close(out["expected_expert_loss"], torch.tensor(expected))
    torch.testing.assert_close(out["kl"], torch.tensor(expected / 10))
    torch.testing.assert_close(out["balancing_loss"], torch.tensor(0.0625))
    torch.testing.assert_close(out["sub_balancing_loss"], torch.tensor(0.030625 + 0.04))
    torch.testing.assert_close(out["loss"], torch.tensor(expected + 0.5 * 0.0625 + 2.0 * 0.070625))
    assert "manager_loss" not in out  # no IMSAT weights set


def test_shapes_routing_and_leaf_order():
    torch.manual_seed(0)
    model = hmoe(3, 2)
    x = model.prepare(torch.rand(5, 784))
    sub = model.sub_cluster_probs(x)
    assert sub.shape == (5, 3, 2)
    torch.testing.assert_close(sub.sum(-1), torch.ones(5, 3))
    assert model.cluster_probs(x).shape == (5, 3) and model.leaves == 6
    assert model.encode(x)[0].shape == (6, 5, 4) and model.sample_components(2).shape == (6, 2, 784)
    leaf = model.route(x)
    k = model.cluster_probs(x).argmax(1)
    assert torch.equal(leaf // 2, k)  # the routed leaf sits in the reported cluster
    assert torch.equal(leaf % 2, sub[torch.arange(5), k].argmax(1))
    log_q = model.leaf_log_probs(x)  # (B, K*J) = log p(k|x) + log p(j|x,k)
    torch.testing.assert_close(log_q.exp().view(5, 3, 2), model.cluster_probs(x)[:, :, None] * sub)
    assert set(model(x)) >= {"loss", "expected_expert_loss", "balancing_loss", "sub_balancing_loss", "kl"}


def test_bad_sub_experts_is_one_line():
    with pytest.raises(ConfigError, match=r"model.hmoe_vae.sub_experts=0 is invalid; use an integer >= 1"):
        model_config({"kind": "hmoe_vae", "hmoe_vae.sub_experts": 0})


def same_outputs(a, b, x):
    """Equal losses, log importance weights and clusters under the same random numbers."""
    for f in (lambda m: m(x), lambda m: {"log_w": m.log_importance_weights(x, 7)},
              lambda m: {"probs": m.cluster_probs(x)}):
        torch.manual_seed(1)
        want = f(a)
        torch.manual_seed(1)
        got = f(b)
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, msg=key)


def test_one_sub_expert_is_moe_vae():
    """J = 1: p(j|x,k) = 1, no second-level term, the leaves are moe_vae's K experts (the
    IMSAT manager terms included)."""
    over = {"balancing_weight": 0.3, "manager": IMSAT}
    torch.manual_seed(0)
    flat = moe(3, **{f"moe_vae.{k}": v for k, v in over.items()})
    deep = hmoe(3, 1, **{f"hmoe_vae.{k}": v for k, v in over.items()})
    missing, unexpected = deep.load_state_dict(flat.state_dict(), strict=False)
    assert all(m.startswith("sub_managers.") for m in missing) and not unexpected
    x = deep.prepare(torch.rand(6, 784))
    same_outputs(flat, deep, x)
    assert "augment_consistency" in deep(x)
    torch.testing.assert_close(deep(x)["sub_balancing_loss"], torch.tensor(0.0))


def test_one_expert_is_moe_vae_over_the_sub_experts():
    """K = 1: p(k|x) = 1, and the sub-manager is moe_vae's manager over J experts with the
    second-level weight in the role of moe_vae's balancing weight."""
    torch.manual_seed(0)
    flat = moe(4, **{"moe_vae.balancing_weight": 0.7})
    deep = hmoe(1, 4, **{"hmoe_vae.sub_balancing_weight": 0.7})
    state = {k.replace("manager.", "sub_managers.", 1) if k.startswith("manager.") else k: v
             for k, v in flat.state_dict().items()}
    missing, unexpected = deep.load_state_dict(state, strict=False)
    assert all(m.startswith("manager.") for m in missing) and not unexpected
    x = deep.prepare(torch.rand(6, 784))
    torch.manual_seed(1)
    want = flat(x)
    torch.manual_seed(1)
    got = deep(x)
    torch.testing.assert_close(got["loss"], want["loss"])
    torch.testing.assert_close(got["sub_balancing_loss"], want["balancing_loss"])
    torch.manual_seed(1)
    lw = flat.log_importance_weights(x, 7)
    torch.manual_seed(1)
    torch.testing.assert_close(deep.log_importance_weights(x, 7), lw)
    assert torch.equal(deep.route(x), flat.route(x))


def leaf_shares(model, pixels):
    """(K, J) share of each sub-expert in its expert's soft mass, p(k|x) p(j|x,k) summed."""
    with torch.no_grad():
        x = model.prepare(pixels.float() / 255)
        mass = model.cluster_probs(x)[:, :, None] * model.sub_cluster_probs(x)  # (N, K, J)
    usage = mass.sum(0)
    return usage / usage.sum(1, keepdim=True)


@pytest.mark.parametrize("sub_weight, keeps_all", [(5.0, True), (0.0, False)])
def test_second_level_balancing_keeps_every_sub_expert_in_use(tiny_shards, sub_weight, keeps_all):
    """A short run on the blob shards: with the second-level term every sub-expert keeps
    a fair share of its expert's images; without it some sub-expert starves."""
    torch.manual_seed(0)
    model = hmoe(2, 3, **{"hmoe_vae.balancing_weight": 1.0, "hmoe_vae.sub_balancing_weight": sub_weight})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pixels = torch.from_numpy(load_split(tiny_shards, "train").pixels.copy())
    for epoch in range(6):
        train_epoch(model, model, opt, pixels, 50, 8, epoch, seed=0)
    shares = leaf_shares(model, pixels)  # (2, 3)
    top = model.cluster_probs(model.prepare(pixels.float() / 255)).mean(0)
    assert top.min() > 0.25, top  # the top-level term: both experts in use
    assert (shares.min() > 0.2) == keeps_all, shares


def test_log_likelihood_over_k_j_z_is_exact_when_decoders_ignore_z():
    """p(x) = sum_{k,j} prod_d Bernoulli(x_d; sigmoid(c_kj,d)) / (K*J) when every
    decoder ignores z, whatever the routing and encoders propose."""
    torch.manual_seed(0)
    cfg = model_config({"kind": "hmoe_vae", "hmoe_vae.experts": 2, "hmoe_vae.sub_experts": 3,
                        "likelihood.name": "bernoulli", "net.latent_dim": 2, "net.hidden": 5})
    model = HMoEVAE(cfg, n_pixels=12)
    with torch.no_grad():
        model.decoders.layers[1].weight.zero_()
        model.decoders.layers[1].bias.normal_(0, 2)
    c = model.decoders.layers[1].bias[:, 0]  # (K*J, D) logits
    x = torch.bernoulli(torch.full((4, 12), 0.5), generator=torch.Generator().manual_seed(1))
    log_p = -F.binary_cross_entropy_with_logits(c[:, None].expand(6, 4, 12), x.expand(6, 4, 12),
                                                reduction="none").sum(-1)  # (K*J, B)
    exact = torch.logsumexp(log_p - math.log(6), 0)
    torch.manual_seed(0)  # 6 leaves under a poor proposal: more samples than moe_vae's test
    est = iw_log_likelihood(model, x, n_samples=200_000, chunk=20_000)
    torch.testing.assert_close(est.float(), exact, atol=0.05, rtol=0)  # seen: <= 0.003


def test_variance_explained_by_a_split():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1], 50)
    pixels = np.repeat(groups[:, None], 3, 1).astype(float)  # two points: the split is all
    assert explained(pixels, groups) == pytest.approx(1.0)
    noise = rng.normal(size=(100, 3))
    assert explained(noise, groups) < 0.05 and explained(noise, np.zeros(100, int)) == pytest.approx(0.0)


def test_evaluate_stage_reports_and_draws_the_second_level(tiny_shards, tmp_path):
    torch.manual_seed(0)
    model = hmoe(3, 2, **{"net.latent_dim": 2})
    save_model(model, tmp_path / "m.pt")
    cfg = EvaluateConfig(iw_samples=4, iw_chunk=4, ll_limit=10)
    live = tmp_path / "live"
    m = evaluate_stage(cfg, tiny_shards, tmp_path / "m.pt", live, log=str)
    assert json.loads((live / "metrics.json").read_text()) == json.loads(json.dumps(m))
    usage = m["sub_cluster_usage"]
    assert set(usage) == {"0", "1", "2"} and all(len(u) == 2 for u in usage.values())
    for k, u in usage.items():  # shares of a used cluster sum to 1
        assert sum(u.values()) == pytest.approx(1.0) or sum(u.values()) == 0.0
    assert 0 <= m["sub_variance_explained_random_split"] <= m["sub_variance_explained_kmeans"] <= 1
    assert m["cluster_purity"] <= m["leaf_purity"] <= 1
    for f in ("sub_expert_samples.png", "sub_expert_claims.png", "component_samples.png"):
        assert (live / "plots/images" / f).stat().st_size > 0
    rows = json.loads((live / "plots/custom/sub_clusters.json").read_text())
    assert [r["leaf"] for r in rows] == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
    assert {"images", "share_in_expert", "top_digit", "slant_deg"} <= set(rows[0])


def test_shape_stats_read_slant_width_and_ink():
    img = np.zeros((3, 28, 28))
    img[0, 4:24, 13:15] = 1  # an upright bar
    for r in range(4, 24):  # the same bar leaning right: top to the right
        img[1, r, 13 + (14 - r) // 2: 15 + (14 - r) // 2] = 1
    img[2, 4:24, 10:18] = 1  # a wide bar
    ink, slant, width = shape_stats(img.reshape(3, -1)).T
    assert abs(slant[0]) < 1 and slant[1] > 15 and abs(slant[2]) < 1
    assert width[2] > 3 * width[0] and ink[2] == pytest.approx(4 * ink[0])
