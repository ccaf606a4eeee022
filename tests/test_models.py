"""Every registered model kind: builds, finite loss, learns, shapes, checkpoint round trip."""
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.data import load_split
from pipeline.models import REGISTRY, build_model, load_model, save_model
from pipeline.models.blocks import BatchedMLP
from pipeline.train import train_epoch

KINDS = sorted(REGISTRY)


def small(kind, **kw):
    return ModelConfig(kind=kind, experts=3, latent_dim=4, hidden=32, **kw)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_shapes_and_finite_loss(kind, likelihood):
    torch.manual_seed(0)
    model = build_model(small(kind, likelihood=likelihood))
    x = model.likelihood.prepare(torch.rand(5, 784))
    out = model(x)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert model.sample(7).shape == (7, 784)
    comps = model.sample_components(2)
    assert comps.shape[1:] == (2, 784) and comps.min() >= 0 and comps.max() <= 1
    assert model.reconstruct(x).shape == (5, 784)
    assert model.log_importance_weights(x, 6).shape == (5, 6)
    probs = model.cluster_probs(x)
    if probs is not None:
        torch.testing.assert_close(probs.sum(1), torch.ones(5))


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_epochs_lower_the_loss(kind, tiny_shards):
    torch.manual_seed(0)
    model = build_model(small(kind))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pixels = torch.from_numpy(load_split(tiny_shards, "train").pixels.copy())
    losses = [train_epoch(model, model, opt, pixels, 50, 8, e, seed=0)["loss"] for e in range(4)]
    assert losses[-1] < losses[0] - 10, losses


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip(kind, tmp_path):
    torch.manual_seed(0)
    model = build_model(small(kind))
    save_model(model, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert back.cfg == model.cfg and type(back) is type(model)
    x = torch.rand(4, 784)
    torch.manual_seed(1)
    a = model(x)["loss"]
    torch.manual_seed(1)
    assert back(x)["loss"].item() == a.item()


def test_checkpoint_is_weights_only(tmp_path):
    save_model(build_model(small("moe_vae")), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)  # raises on pickled code
    assert state["kind"] == "moe_vae" and state["config"]["experts"] == 3


def test_batched_experts_equal_one_at_a_time():
    torch.manual_seed(0)
    net = BatchedMLP(4, [10, 8, 6], "sigmoid")
    x = torch.randn(5, 10)
    together = net(x)  # (K, B, O) from shared input
    for k in range(4):
        torch.testing.assert_close(together[k], net.one(k, x))
    per_expert = torch.randn(4, 5, 10)
    out = net(per_expert)
    for k in range(4):
        torch.testing.assert_close(out[k], net.one(k, per_expert[k]))
