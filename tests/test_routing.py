"""Sparse top-k routing (model.top_k): packing, equivalence with the dense MoE, gradients;
the experts' larger batches once the manager is fixed (expert_batch_scale)."""
import pytest
import torch

from pipeline.models.registry import build_model
from pipeline.models.routing import pack
from tests.conftest import model_cfg


def small(**kw):
    return model_cfg(experts=4, latent_dim=3, hidden=16, **kw)


def test_pack_puts_each_pair_in_its_experts_next_free_row():
    choices = torch.tensor([[2, 0], [2, 1], [0, 2]])  # (B=3, k=2)
    expert, row, cap = pack(choices, 4)
    assert expert.tolist() == [2, 0, 2, 1, 0, 2]
    assert row.tolist() == [0, 0, 1, 0, 1, 2]  # expert 2 holds images 0, 1, 2 in order
    assert cap == 3  # the busiest expert; expert 3 got nothing and is all padding


def test_top_k_equal_to_k_experts_is_the_dense_model():
    torch.manual_seed(0)
    dense = build_model(small())
    routed = build_model(small(top_k=4))
    routed.load_state_dict(dense.state_dict())
    x = torch.rand(6, 784)
    torch.manual_seed(1)  # the same reparameterisation noise: (K, C=B, L) in both
    a = dense(x)
    torch.manual_seed(1)
    b = routed(x)
    for key in ("loss", "expected_expert_loss", "kl"):
        assert b[key].item() == pytest.approx(a[key].item(), rel=1e-6)


def test_top_1_trains_only_the_chosen_experts():
    torch.manual_seed(0)
    model = build_model(small(top_k=1))
    x = torch.rand(5, 784)
    chosen = set(model.cluster_probs(x).argmax(-1).tolist())
    model.zero_grad()
    model(x)["expected_expert_loss"].backward()  # k = 1: every gate is 1
    last = model.decoders.layers[-1].bias.grad[:, 0]  # (K, D): one row per expert
    used = {e for e in range(4) if last[e].abs().max() > 0}
    assert used == chosen
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.manager.parameters())


def test_top_2_sends_gradient_to_the_manager_and_learns():
    torch.manual_seed(0)
    model = build_model(small(top_k=2))
    x = torch.rand(32, 784)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model(x)["loss"].item()
    parts = model(x)
    parts["loss"].backward()
    assert any(p.grad.abs().max() > 0 for p in model.manager.parameters())
    for _ in range(20):
        opt.zero_grad()
        model(x)["loss"].backward()
        opt.step()
    assert model(x)["loss"].item() < first - 10


def test_expert_batch_scale_applies_once_the_manager_is_fixed_and_only_then():
    """manager_epochs: 2, expert_batch_scale: 4 -> epochs 1-2 at train.batch_size, then x4;
    the default (1) and kinds without the phase (vae) never scale."""
    from pipeline.models.registry import model_config

    scaled = build_model(model_config({"moe_vae.manager_epochs": 2, "moe_vae.expert_batch_scale": 4,
                                       "net.hidden": 8, "net.latent_dim": 2}))
    assert [scaled.batch_scale(e) for e in range(4)] == [1, 1, 4, 4]
    fixed = []  # the manager is fixed on exactly the scaled epochs
    for e in range(4):
        scaled.set_epoch(e)
        fixed.append(scaled.manager_fixed)
    assert fixed == [False, False, True, True]
    plain = build_model(model_config({"moe_vae.manager_epochs": 2, "net.hidden": 8, "net.latent_dim": 2}))
    vae = build_model(model_config({"kind": "vae", "net.hidden": 8, "net.latent_dim": 2}))
    assert [plain.batch_scale(e) for e in range(4)] == [vae.batch_scale(e) for e in range(4)] == [1] * 4


@pytest.mark.parametrize("over, fix", [
    ({"moe_vae.expert_batch_scale": 0}, "integer >= 1"),
    ({"moe_vae.expert_batch_scale": 2.5, "moe_vae.manager_epochs": 1}, "expected int"),
    ({"moe_vae.expert_batch_scale": 4}, "set model.moe_vae.manager_epochs too"),
])
def test_expert_batch_scale_rejects_bad_values_in_one_line(over, fix):
    from pipeline.core.errors import ConfigError
    from pipeline.models.registry import model_config

    with pytest.raises(ConfigError, match="model.moe_vae.expert_batch_scale") as e:
        model_config(over)
    assert fix in str(e.value) and "\n" not in str(e.value)
