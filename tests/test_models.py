"""Every registered model kind: builds, finite loss, learns, shapes, checkpoint round trip."""
import dataclasses
import math

import pytest
import torch

from pipeline.data.load import load_split
from pipeline.models.blocks import BatchedMLP, ConvDecoder, ConvEncoder
from pipeline.models.checkpoint import load_model, save_model
from pipeline.models.registry import KINDS, build_model
from pipeline.training.loop import component_snapshot, train_epoch
from tests.conftest import model_cfg

# (clusters, mixture components) per kind in small(); the others: k-means and one component
COMPONENTS = {"moe_vae": (3, 3), "gmm_vae": (5, 5), "hmoe_vae": (3, 6)}
KINDS = sorted(KINDS)


def small(kind, **kw):
    cfg = model_cfg(kind=kind, experts=3, components=5, latent_dim=4, hidden=32, conv_channels=4, **kw)
    # hmoe_vae's block has no format-2 name: K = 3 experts of J = 2 sub-experts each
    return dataclasses.replace(cfg, hmoe_vae=dataclasses.replace(cfg.hmoe_vae, experts=3, sub_experts=2))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_shapes_and_finite_loss(kind, encoder, likelihood):
    torch.manual_seed(0)
    model = build_model(small(kind, encoder=encoder, likelihood=likelihood))
    x = model.likelihood.prepare(torch.rand(5, 784))
    out = model(x)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert all(v.dim() == 0 for v in out.values())  # every part is a loggable scalar
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.sample(7).shape == (7, 784)
    comps = model.sample_components(2)
    assert comps.shape == (COMPONENTS.get(kind, (1, 1))[1], 2, 784) and comps.min() >= 0 and comps.max() <= 1
    assert model.reconstruct(x).shape == (5, 784)
    assert model.latent_mean(x).shape == (5, 4)
    assert model.morph(x[:2], x[2:4], 6).shape == (2, 6, 784)
    assert model.log_importance_weights(x, 6).shape == (5, 6)
    assert torch.isfinite(model.log_importance_weights(x, 6)).all()
    probs = model.cluster_probs(x)
    if kind in COMPONENTS:
        assert probs.shape == (5, COMPONENTS[kind][0])
        torch.testing.assert_close(probs.sum(1), torch.ones(5))
    else:
        assert probs is None  # evaluation clusters these kinds with k-means


@pytest.mark.parametrize("kind", KINDS)
def test_morph_ends_at_the_reconstructions(kind):
    torch.manual_seed(0)
    model = build_model(small(kind))
    x = torch.rand(4, 784)
    path = model.morph(x[:2], x[2:], 5)
    torch.testing.assert_close(path[:, 0], model.reconstruct(x[:2]))
    torch.testing.assert_close(path[:, -1], model.reconstruct(x[2:]))


def test_component_snapshot_repeats_its_noise():
    torch.manual_seed(0)
    model = build_model(small("moe_vae"))
    a = component_snapshot(model, seed=3)
    torch.manual_seed(99)
    assert a.shape == (3, 784) and a.dtype == torch.uint8
    assert torch.equal(a, component_snapshot(model, seed=3)) and model.training


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


@pytest.mark.parametrize("kind", ["vae", "moe_vae"])
def test_conv_model_lowers_its_loss(kind, tiny_shards):
    torch.manual_seed(0)
    model = build_model(small(kind, encoder="conv", activation="relu"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pixels = torch.from_numpy(load_split(tiny_shards, "train").pixels.copy())
    losses = [train_epoch(model, model, opt, pixels, 50, 4, e, seed=0)["loss"] for e in range(3)]
    assert losses[-1] < losses[0] - 10, losses


def test_conv_experts_are_independent_groups():
    torch.manual_seed(0)
    enc, dec = ConvEncoder(3, 4, 16, 6, "relu"), ConvDecoder(3, 4, 16, 5, "relu")
    x = torch.rand(7, 784)
    assert enc(x).shape == (3, 7, 6)
    z = torch.randn(3, 7, 5)
    out = dec(z)
    assert out.shape == (3, 7, 784)
    for k in range(3):
        torch.testing.assert_close(out[k], dec.one(k, z[k]))
    z2 = z.clone()
    z2[1] += 1.0  # changing expert 1's code leaves experts 0 and 2 untouched
    out2 = dec(z2)
    torch.testing.assert_close(out2[0], out[0])
    torch.testing.assert_close(out2[2], out[2])
    assert (out2[1] - out[1]).abs().max() > 1e-3


def test_checkpoint_is_weights_only(tmp_path):
    save_model(build_model(small("moe_vae")), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)  # raises on pickled code
    assert state["kind"] == "moe_vae" and state["config"]["moe_vae"]["experts"] == 3


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


def test_shared_input_layout_is_the_same_model_without_the_copies():
    """shared_input only moves the first layer's weight in memory: the same initial values
    from the same seed, equal outputs and gradients, and a gradient written in that layout."""
    torch.manual_seed(0)
    plain = BatchedMLP(4, [10, 8, 6], "sigmoid")
    torch.manual_seed(0)
    shared = BatchedMLP(4, [10, 8, 6], "sigmoid", shared_input=True)
    w = shared.layers[0].weight
    assert w.shape == (4, 10, 8) and w.stride() == (8, 32, 1)  # (I, K, O) in memory
    assert torch.equal(w, plain.layers[0].weight)
    x = torch.randn(5, 10)
    shared(x).square().sum().backward()
    plain(x).square().sum().backward()
    assert w.grad.stride() == w.stride()  # no copy back to (K, I, O)
    assert torch.equal(w.grad, plain.layers[0].weight.grad)
    again = BatchedMLP(4, [10, 8, 6], "sigmoid", shared_input=True)
    again.load_state_dict(plain.state_dict())  # checkpoints load across layouts
    assert torch.equal(again(x), plain(x)) and again.layers[0].weight.stride() == w.stride()


@pytest.mark.parametrize("kind", ["vae", "gmm_vae"])
def test_iwae_bound_is_the_elbo_at_one_sample_and_tighter_with_more(kind):
    """IWAE with S samples: at S = 1 the same number as the ELBO's single-sample estimate
    (same noise); averaged over draws it rises with S and stays below log p(x)."""
    torch.manual_seed(0)
    model = build_model(small(kind, likelihood="bernoulli"))
    x = model.prepare(torch.rand(16, 784))

    def bound(s, draws=200):
        model.spec = dataclasses.replace(model.spec, importance_samples=s)
        with torch.no_grad():
            return torch.stack([-model(x)["loss"] for _ in range(draws)]).mean()

    torch.manual_seed(1)
    one = model.iwae_loss(x)["loss"]
    torch.manual_seed(1)
    lw = model.log_weights(x, 1)[:, 0]  # the ELBO's estimate: log w of one sample
    assert torch.allclose(one, -lw.mean())
    elbo, iw5, iw50 = bound(1), bound(5), bound(50)
    with torch.no_grad():  # log p(x) by 5000 samples, in chunks
        lw = torch.cat([model.log_weights(x, 500) for _ in range(10)], 1)
        log_px = (torch.logsumexp(lw, 1) - math.log(5000)).mean()
    assert elbo < iw5 < iw50 < log_px + 0.1  # tolerance: log p(x) is itself an estimate


def test_iwae_training_only_changes_the_loss():
    torch.manual_seed(0)
    model = build_model(small("vae", likelihood="bernoulli", importance_samples=4))
    x = model.prepare(torch.rand(8, 784))
    out = model(x)
    assert set(out) == {"loss", "iwae_bound"} and torch.equal(out["loss"], -out["iwae_bound"])
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ModelConfig as f094c6b wrote it into model files (format 2: one flat mapping).
V2_CONFIG = {"kind": "moe_vae", "encoder": "mlp", "experts": 3, "latent_dim": 4, "hidden": 32,
             "conv_channels": 32, "activation": "sigmoid", "balancing_weight": 0.1, "components": 10,
             "learn_prior_weights": True, "mmd_weight": 1000.0, "mmd_proposal_std": 0.2,
             "importance_samples": 1, "likelihood": "bernoulli", "gaussian_std": 0.5,
             "manager_encoder": "conv", "manager_hidden": None, "manager_activation": "relu",
             "manager_batchnorm": False, "manager_input": "sample", "entropy_weight": 10.0,
             "marginal_entropy_weight": 40.0, "consistency_weight": 100.0, "consistency_eps": 1.5,
             "augment_weight": 100.0, "manager_warmup_epochs": 1, "top_k": None}


def test_a_model_file_written_before_the_nested_params_still_loads(tmp_path):
    from pipeline.models.checkpoint import upgrade_v2
    from pipeline.models.registry import model_config

    cfg = model_config({"moe_vae.experts": 3, "net.latent_dim": 4, "net.hidden": 32,
                        "likelihood.name": "bernoulli", "moe_vae.warmup_epochs": 1,
                        "mmd_vae.proposal_std": 0.2,  # the file's own value, not today's default
                        "mmd_vae.kernel": "gaussian",  # the only kernel before issue 20
                        "moe_vae.manager": {"encoder": "conv", "activation": "relu", "entropy_weight": 10,
                                            "marginal_entropy_weight": 40, "consistency_weight": 100,
                                            "augment_weight": 100}})
    assert upgrade_v2(V2_CONFIG)["moe_vae"]["manager"]["entropy_weight"] == 10.0
    torch.manual_seed(0)
    model = build_model(cfg)
    torch.save({"format": 2, "kind": "moe_vae", "config": V2_CONFIG,
                "state_dict": model.state_dict()}, tmp_path / "old.pt")
    back = load_model(tmp_path / "old.pt")
    assert back.cfg == cfg
    x = (torch.rand(4, 784) > 0.5).float()
    assert torch.equal(back.cluster_probs(x), model.cluster_probs(x))



def crafted_file(path, changes, state_dict=None):
    """A small model file whose stored config has `changes` (dotted keys under `model`)
    applied past every check, as a crafted file would."""
    from pipeline.core.schema import apply_overrides, to_dict
    from pipeline.models.checkpoint import FORMAT_VERSION
    from pipeline.models.registry import model_config

    cfg = apply_overrides(to_dict(model_config({})), changes)
    torch.save({"format": FORMAT_VERSION, "kind": cfg["kind"], "config": cfg,
                "state_dict": {} if state_dict is None else state_dict}, path)
    return path


@pytest.mark.parametrize("changes, needle", [
    ({"net.latent_dim": 1_000_000}, "model.net.latent_dim=1000000 is invalid; use an integer >= 1, at most 4096"),
    ({"net.hidden": 32768, "moe_vae.experts": 1000},
     "has 53,471,155,880 parameters, which need 796.8 GiB to train"),
])
def test_a_small_model_file_with_a_huge_config_is_refused_before_allocating(tmp_path, changes, needle):
    """A 2 KB file whose config says 1000000 latents, or sizes in bounds that multiply into
    800 GiB: one line naming them within a couple of seconds (evaluate used to allocate
    past 8 GB first)."""
    import time

    from pipeline.core.errors import ConfigError

    path = crafted_file(tmp_path / "m.pt", changes)
    assert path.stat().st_size < 10_000
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_model(path)
    assert time.perf_counter() - t0 < 2
    msg = str(e.value)
    assert msg.startswith(f"{path}: its config no longer builds (") and needle in msg and "\n" not in msg
    assert "params.yaml" not in msg  # the file's config, not the user's params


def test_weights_that_do_not_fit_their_config_are_refused_by_key_before_building(tmp_path):
    from pipeline.core.errors import DataError
    from pipeline.models.registry import model_config

    weights = build_model(model_config({"moe_vae.experts": 2, "net.hidden": 8})).state_dict()
    path = crafted_file(tmp_path / "m.pt", {"moe_vae.experts": 2, "net.hidden": 9}, weights)
    with pytest.raises(DataError) as e:
        load_model(path)
    key = next(k for k in weights if weights[k].shape[-1:] == (8,))  # the first 8-wide tensor
    want = tuple(weights[key].shape[:-1]) + (9,)
    assert str(e.value) == (f"{path}: its config does not match its weights: {key} is "
                            f"{tuple(weights[key].shape)} in the file but {want} for its config; "
                            f"not a model file this project wrote, retrain (dvc repro train)")
    path = crafted_file(tmp_path / "m.pt", {"moe_vae.experts": 2, "net.hidden": 8},
                        {**weights, "extra.weight": torch.zeros(3)})
    with pytest.raises(DataError, match=r"extra.weight is \(3,\) in the file but absent for its config"):
        load_model(path)
    del weights[key]
    path = crafted_file(tmp_path / "m.pt", {"moe_vae.experts": 2, "net.hidden": 8}, weights)
    with pytest.raises(DataError, match=f"{key} is missing in the file"):
        load_model(path)


class Payload:
    """Pickled code: unpickling it runs a shell command."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.target}",)


def test_a_model_file_that_holds_code_is_refused_unread_without_unsafe_advice(tmp_path):
    from pipeline.core.errors import DataError

    ran = tmp_path / "payload-ran"
    torch.save({"format": 3, "kind": "moe_vae", "config": Payload(ran), "state_dict": {}},
               tmp_path / "m.pt")
    with pytest.raises(DataError) as e:
        load_model(tmp_path / "m.pt")
    assert not ran.exists()
    assert str(e.value) == (f"{tmp_path / 'm.pt'} holds code or types a model file never has, so "
                            f"it was refused unread; rerun the train stage to write it again "
                            f"(dvc repro train)")
    assert "weights_only" not in str(e.value)


def test_gated_layers_are_linear_units_times_a_sigmoid_gate():
    torch.manual_seed(0)
    net = BatchedMLP(3, [10, 8, 8, 6], "relu", gated=True)
    assert [tuple(l.weight.shape) for l in net.layers] == [(3, 10, 16), (3, 8, 16), (3, 8, 6)]
    x = torch.randn(5, 10)
    h = x
    for layer in net.layers[:-1]:  # by hand: a = W x + b, g = V x + c, h = a * sigmoid(g)
        a, g = layer.one(1, h).split(8, dim=-1)
        h = a * torch.sigmoid(g)
    torch.testing.assert_close(net(x)[1], net.layers[-1].one(1, h))
    torch.testing.assert_close(net.one(1, x), net(x)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_deep_gated_experts(kind):
    """net.layers and net.gated reach every kind's MLP blocks: the published 300-300 gated
    baseline is two hidden layers of 2 x 300 linear units, and every part still trains."""
    from pipeline.models.registry import model_config

    torch.manual_seed(0)
    flat = {"kind": kind, "net.hidden": 12, "net.latent_dim": 4, "moe_vae.experts": 3,
            "hmoe_vae.experts": 2, "hmoe_vae.sub_experts": 2, "gmm_vae.components": 3}
    plain = build_model(model_config(flat))
    deep = build_model(model_config({**flat, "net.layers": 2, "net.gated": True}))
    widths = lambda m: sorted(p.shape[-1] for n, p in m.named_parameters() if "coder" in n and "weight" in n)
    assert widths(deep).count(24) == 2 * widths(plain).count(12)  # each hidden layer: [a, g], twice
    x = deep.likelihood.prepare(torch.rand(5, 784))
    out = deep(x)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in deep.parameters() if p.requires_grad)
    assert torch.isfinite(deep.log_importance_weights(x, 3)).all()


def test_default_blocks_and_model_files_are_unchanged_by_the_new_keys(tmp_path):
    """layers: 1 and gated: false build the one-hidden-layer blocks of every recorded run,
    and a model file stores neither key (its bytes stay those of older code)."""
    from pipeline.core.errors import ConfigError
    from pipeline.models.registry import model_config

    model = build_model(model_config({"kind": "vae", "net.hidden": 16}))
    assert [tuple(p.shape) for p in model.encoder.parameters()] == [(1, 784, 16), (1, 1, 16), (1, 16, 40), (1, 1, 40)]
    save_model(model, tmp_path / "m.pt")
    assert set(torch.load(tmp_path / "m.pt", weights_only=True)["config"]["net"]) == {
        "encoder", "latent_dim", "hidden", "conv_channels", "activation"}
    with pytest.raises(ConfigError, match=r"model\.net\.encoder.*conv.*use encoder: mlp"):
        model_config({"net.encoder": "conv", "net.layers": 2})
