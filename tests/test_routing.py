"""Sparse top-k routing (model.top_k): packing, equivalence with the dense MoE, gradients;
the experts' larger batches once the manager is fixed (expert_batch_scale)."""
import pytest
import torch

from pipeline.models.registry import build_model
from pipeline.models.routing import on_blocks, pack
from tests.conftest import model_cfg


def small(**kw):
    return model_cfg(experts=4, latent_dim=3, hidden=16, **kw)


def test_pack_puts_each_pair_in_its_experts_next_free_row():
    choices = torch.tensor([[2, 0], [2, 1], [0, 2]])  # (B=3, k=2)
    packing = pack(choices, 4)
    assert packing.expert.tolist() == [2, 0, 2, 1, 0, 2]
    assert packing.row.tolist() == [0, 0, 1, 0, 1, 2]  # expert 2 holds images 0, 1, 2 in order
    assert packing.cap == 3  # the busiest expert; expert 3 got nothing and is all padding
    pairs = packing.pairs(torch.tensor([10.0, 11.0, 12.0]))  # (B,) -> (A,) = (B*k,)
    blocks = packing.pack(pairs)  # (K, C)
    assert blocks.tolist() == [[10, 12, 0], [11, 0, 0], [10, 11, 12], [0, 0, 0]]
    assert torch.equal(packing.unpack(blocks), pairs)
    top1 = pack(choices[:, :1], 4)  # k = 1: one pair per image, the images themselves
    images = torch.rand(3, 5)
    assert top1.pairs(images) is images


SHARED = {"moe_vae.experts": 4, "net.latent_dim": 3, "net.hidden": 16, "net.layers": 2,
          "net.gated": True, "net.shared_hidden": True}


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


@pytest.mark.parametrize("k", [1, 2])
def test_shared_layers_skip_the_padding_rows_and_give_the_blocks_losses(k):
    """With shared hidden layers the bodies see each image (encoder) and each pair
    (decoder) once, not the K*C padded rows: same losses and gradients as running every
    layer on the blocks, with the same noise."""
    from pipeline.models.registry import model_config

    torch.manual_seed(0)
    model = build_model(model_config({**SHARED, "moe_vae.top_k": k}))
    x = torch.rand(7, 784).bernoulli()
    packing = pack(torch.rand(7, 4).topk(k, -1).indices, 4)
    seen = []
    hook = model.decoders.body[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    torch.manual_seed(1)
    loss, kl = model.expert_losses(x, packing)  # (A,) each
    hook.remove()
    assert seen == [(7 * k, 16)] and packing.experts * packing.cap > 7 * k  # the padding was skipped
    grad = torch.autograd.grad(loss.sum(), model.encoders.body[0].weight)[0]
    torch.manual_seed(1)
    blocks, kl_blocks = on_blocks(model, x, packing)  # every layer on the (K, C) blocks, padding too
    torch.testing.assert_close(loss, blocks)
    torch.testing.assert_close(kl, kl_blocks)
    by_blocks = torch.autograd.grad(blocks.sum(), model.encoders.body[0].weight)[0]
    torch.testing.assert_close(grad, by_blocks)


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
