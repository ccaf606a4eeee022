"""The likelihood recipe's expert options: model.net.shared_hidden (the K experts share
their hidden layers; each owns only its encoder's output layer and its decoder's input
layer) and model.moe_vae.kl_warmup_epochs (the experts' KL weighed up over N epochs)."""
import pytest
import torch

from pipeline.core.errors import ConfigError
from pipeline.models.registry import build_model, model_config

FLAT = {"net.activation": "relu", "net.hidden": 12, "net.latent_dim": 3, "net.layers": 2, "moe_vae.experts": 4}


def shared(**over):
    torch.manual_seed(0)
    return build_model(model_config({**FLAT, "net.shared_hidden": True, **over}))


@pytest.mark.parametrize("gated", [False, True])
def test_experts_differ_only_in_their_own_layers(gated):
    """Expert k = shared body, then its head: worked by hand from the parameters; the
    per-expert weights are the encoder's last layer and the decoder's first, nothing else."""
    model = shared(**{"net.gated": gated})
    per_expert = sorted(n for n, p in model.named_parameters() if "coder" in n and p.shape[0] == 4)
    assert per_expert == ["decoders.head.bias", "decoders.head.weight",
                          "encoders.head.bias", "encoders.head.weight"]
    act = (lambda y: y[..., :12] * torch.sigmoid(y[..., 12:])) if gated else torch.relu
    x = torch.rand(5, 784)
    enc, dec = model.encoders, model.decoders
    h = act(enc.body[2](act(enc.body[0](x))))  # (B, H), the same for every expert
    mu, logvar = model.encode(x)  # (K, B, L)
    for k in range(4):
        torch.testing.assert_close(torch.cat([mu[k], logvar[k]], -1),
                                   h @ enc.head.weight[k] + enc.head.bias[k, 0])
    z = torch.randn(4, 5, 3)
    logits = model.decode(z)  # (K, B, D)
    for k in range(4):
        by_hand = dec.body[2](act(dec.body[0](act(z[k] @ dec.head.weight[k] + dec.head.bias[k, 0]))))
        torch.testing.assert_close(logits[k], by_hand)
        torch.testing.assert_close(dec.one(k, z[k]), logits[k])


@pytest.mark.parametrize("kind", ["moe_vae", "hmoe_vae"])
def test_top_1_experts_all_train_the_shared_layers(kind):
    """Every image's loss reaches the shared body, whichever expert it is routed to; the
    heads of experts no image chose get no gradient; log p(x) weights stay finite."""
    model = shared(**{"kind": kind, "moe_vae.top_k": 1, "hmoe_vae.experts": 2, "hmoe_vae.sub_experts": 2})
    x = model.prepare(torch.rand(6, 784))
    model(x)["expected_expert_loss"].backward()
    assert model.encoders.body[0].weight.grad.abs().max() > 0
    assert model.decoders.body[-1].weight.grad.abs().max() > 0
    if kind == "moe_vae":
        chosen = set(model.cluster_probs(x).argmax(-1).tolist())
        used = {e for e in range(4) if model.decoders.head.bias.grad[e].abs().max() > 0}
        assert used == chosen
    assert torch.isfinite(model.log_importance_weights(x, 3)).all()


def test_shared_layers_cut_the_expert_parameters_about_k_fold():
    plain = build_model(model_config({**FLAT, "net.hidden": 64}))
    both = build_model(model_config({**FLAT, "net.hidden": 64, "net.shared_hidden": True}))
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if "coder" in n)
    assert 3 < count(plain) / count(both) < 4  # 4 experts; the heads stay per expert


@pytest.mark.parametrize("over, fix", [
    ({"kind": "vae"}, "no experts to share them; use false"),
    ({"kind": "gmm_vae"}, "no experts to share them; use false"),
    ({"net.encoder": "conv", "net.layers": 1}, "use encoder: mlp"),
])
def test_shared_hidden_is_refused_where_it_cannot_apply(over, fix):
    with pytest.raises(ConfigError) as e:
        model_config({**FLAT, "net.shared_hidden": True, **over})
    assert fix in str(e.value) and "\n" not in str(e.value)


def test_kl_warmup_weighs_the_experts_kl_up_to_one_and_logs_it_unweighted():
    """Epoch e < N: loss = (e + 1) / N * KL - log p(x|z) with the same noise as without
    warm-up; from epoch N on the loss is the plain one, bit for bit."""
    torch.manual_seed(0)
    plain = build_model(model_config({**FLAT, "moe_vae.top_k": 1}))
    warm = build_model(model_config({**FLAT, "moe_vae.top_k": 1, "moe_vae.kl_warmup_epochs": 4}))
    warm.load_state_dict(plain.state_dict())
    x = plain.prepare(torch.rand(6, 784))

    def parts(model, epoch):
        model.set_epoch(epoch)
        torch.manual_seed(1)
        return {k: v.item() for k, v in model(x).items()}

    base = parts(plain, 0)
    assert [warm.set_epoch(e) or warm.kl_weight for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    early = parts(warm, 1)  # beta = 0.5
    assert early["kl"] == pytest.approx(base["kl"], rel=1e-6)  # logged unweighted
    assert early["expected_expert_loss"] == pytest.approx(base["expected_expert_loss"] - 0.5 * base["kl"],
                                                          rel=1e-5)
    assert parts(warm, 4) == base


def test_kl_warmup_rejects_bad_values_in_one_line():
    with pytest.raises(ConfigError, match=r"model\.moe_vae\.kl_warmup_epochs=-1.*integer >= 0") as e:
        model_config({"moe_vae.kl_warmup_epochs": -1})
    assert "\n" not in str(e.value)
