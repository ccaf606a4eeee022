"""The MoE-VAE manager's label-free terms (IMSAT): values, gradients, the seeds' default."""
import math

import pytest
import torch

from pipeline.models.registry import build_model, model_config
from pipeline.models.blocks import BatchedMLP
from pipeline.models.manager import (Deskew, ManagerConfig, ManagerMLP, conditional_entropy, knn_radius,
                                     manager_terms, marginal_entropy, random_affine, vat_loss)
from tests.conftest import model_cfg

MANAGER = dict(hidden=[16, 16], activation="relu", batchnorm=True, entropy_weight=1.0,
               marginal_entropy_weight=4.0, consistency_weight=1.0, augment_weight=2.0)
IMSAT = {k if k.endswith("weight") else f"manager_{k}": v for k, v in MANAGER.items()}  # format-2 names


def small(**kw):
    return model_cfg(experts=3, latent_dim=4, hidden=32, **kw)


def test_seed_manager_is_the_experts_block_and_adds_no_terms():
    torch.manual_seed(0)
    model = build_model(small())
    assert isinstance(model.manager, BatchedMLP)
    parts = model(torch.rand(8, 784))
    assert set(parts) == {"loss", "expected_expert_loss", "balancing_loss", "kl"}


def test_manager_architecture_params():
    from pipeline.models.blocks import ConvEncoder

    conv = build_model(small(manager_encoder="conv", conv_channels=4, manager_activation="relu"))
    assert isinstance(conv.manager, ConvEncoder) and isinstance(conv.encoders, BatchedMLP)
    assert isinstance(conv.manager.convs[1], torch.nn.ReLU)
    assert conv.manager_logits(torch.rand(5, 784)).shape == (5, 3)
    seed_conv = build_model(small(encoder="conv", conv_channels=4))  # the seeds' conv manager
    assert isinstance(seed_conv.manager, ConvEncoder)
    mlp = build_model(small(manager_hidden=[7, 5], manager_batchnorm=True))
    widths = [m.out_features for m in mlp.manager.net if isinstance(m, torch.nn.Linear)]
    assert widths == [7, 5, 3]


def test_entropies_match_closed_forms():
    uniform = torch.zeros(5, 4)  # logits of p = 1/4 everywhere
    assert conditional_entropy(uniform).item() == pytest.approx(math.log(4))
    one_hot = torch.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]] * 50  # confident and balanced
    assert conditional_entropy(one_hot).item() == pytest.approx(0, abs=1e-6)
    assert marginal_entropy(torch.softmax(one_hot, -1)).item() == pytest.approx(math.log(4), abs=1e-6)
    collapsed = torch.softmax(torch.eye(4)[[0] * 8] * 50, -1)
    assert marginal_entropy(collapsed).item() == pytest.approx(0, abs=1e-6)


def test_vat_is_zero_for_a_constant_classifier_and_positive_otherwise():
    torch.manual_seed(0)
    x = torch.rand(16, 784)
    const = lambda v: torch.zeros(v.shape[0], 3) + 0 * v.sum(1, keepdim=True)  # noqa: E731
    assert vat_loss(const, x, torch.log_softmax(const(x), -1), eps=1.0).item() == pytest.approx(0, abs=1e-7)
    net = ManagerMLP([784, 32, 3], "relu", batchnorm=False)
    f = lambda v: net(v)[0]  # noqa: E731
    log_p = torch.log_softmax(f(x), -1).detach()
    small_r, big_r = (vat_loss(f, x, log_p, eps=e).item() for e in (0.1, 3.0))
    assert 0 < small_r < big_r


def test_manager_terms_train_only_the_manager():
    torch.manual_seed(0)
    cfg = small(**IMSAT)
    model = build_model(cfg)
    assert isinstance(model.manager, ManagerMLP)
    x = torch.rand(8, 784)
    parts = model(x)
    for key in ("conditional_entropy", "marginal_entropy", "consistency", "augment_consistency",
                "manager_loss"):
        assert torch.isfinite(parts[key])
    want = (parts["conditional_entropy"] - 4 * parts["marginal_entropy"] + parts["consistency"]
            + 2 * parts["augment_consistency"])
    assert parts["manager_loss"].item() == pytest.approx(want.item(), rel=1e-5)
    model.zero_grad()
    parts["manager_loss"].backward()
    expert_grads = [p.grad for n, p in model.named_parameters() if not n.startswith("manager.")]
    assert all(g is None or g.abs().max() == 0 for g in expert_grads)
    assert any(p.grad.abs().max() > 0 for p in model.manager.parameters())


def test_imsat_manager_lowers_its_terms():
    torch.manual_seed(0)
    model = build_model(small(**IMSAT))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(64, 784)

    def information(parts):  # the deterministic part: H(Y|X) - 4 H(Y)
        return (parts["conditional_entropy"] - 4 * parts["marginal_entropy"]).item()

    first = information(model(x))
    for _ in range(30):
        opt.zero_grad()
        model(x)["manager_loss"].backward()
        opt.step()
    assert information(model(x)) < first - 0.2  # the optimum is -4 log 3 = -4.39


def test_random_affine_moves_a_digit_a_little_and_keeps_its_ink():
    torch.manual_seed(0)
    img = torch.zeros(64, 28, 28)
    img[:, 8:20, 12:16] = 1.0  # a bar in the middle, like a "1"
    warped = random_affine(img.view(64, -1)).view(64, 28, 28)
    ink = warped.sum((1, 2)) / img.sum((1, 2))
    assert ((ink > 0.75) & (ink < 1.3)).all()  # scale within +-10% -> area within ~+-20%
    assert warped[:, :3].sum() == 0 and warped[:, -3:].sum() == 0  # shift <= 2 px, rotation 12 deg
    assert not torch.allclose(warped[0], warped[1])  # one draw per image


def _slant(img: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) -> (N,) d(column centroid) / d(row) over the inked rows: a bar's slant."""
    cols = torch.arange(28.0)
    ink = img.sum(2)  # (N, 28) ink per row
    centre = (img * cols).sum(2) / ink.clamp_min(1e-6)  # (N, 28)
    out = []
    for c, w in zip(centre, ink):
        rows = torch.nonzero(w > 0.5).flatten().float()
        cs = c[rows.long()]
        out.append(((rows - rows.mean()) * (cs - cs.mean())).sum() / ((rows - rows.mean()) ** 2).sum())
    return torch.stack(out)


def test_warp_shear_slants_an_upright_bar_within_its_range():
    torch.manual_seed(0)
    img = torch.zeros(256, 28, 28)
    img[:, 6:22, 13:15] = 1.0
    flat = img.view(256, -1)
    upright = _slant(random_affine(flat, rotate=0).view(256, 28, 28)).abs()
    slanted = _slant(random_affine(flat, rotate=0, shear=0.3).view(256, 28, 28)).abs()
    assert upright.max() < 0.05  # no rotation, no shear: scale and shift keep a bar upright
    assert 0.2 < slanted.max() < 0.36 and slanted.median() > 0.05  # |s| up to 0.3 (/ scale)


def test_warp_stroke_thickens_and_thins_and_breaks_a_choice_by_thickness():
    """stroke 1: ink ranges from an erosion (a 4-px bar -> 2 px) to a dilation (-> 6 px);
    so a manager that tells bars apart by thickness pays R_aug, and one without it does not."""
    torch.manual_seed(0)
    img = torch.zeros(256, 28, 28)
    img[:, 6:22, 12:16] = 1.0
    flat = img.view(256, -1)
    ink = random_affine(flat, rotate=0, stroke=1.0).sum(1) / flat.sum(1)
    assert ink.min() < 0.65 and ink.max() > 1.4
    assert (random_affine(flat, rotate=0).sum(1) / flat.sum(1)).max() < 1.3

    def by_ink(x):  # logits (B, 2): "thick" when the ink exceeds that of the 4-px bar by 20 %
        return torch.stack([(x.sum(1) - 64 * 1.2) * 0.5, torch.zeros(len(x))], 1)

    target = torch.log_softmax(by_ink(flat), -1)
    kl = {}
    for stroke in (0.0, 1.0):
        torch.manual_seed(1)
        cfg = ManagerConfig(augment_weight=1.0, augment_rotate=0, augment_stroke=stroke)
        kl[stroke] = manager_terms(cfg, by_ink, flat, by_ink(flat), target.exp())["augment_consistency"]
    assert kl[1.0] > 5 * kl[0.0] + 0.05


def test_deskew_stands_slanted_bars_upright_and_centres_them():
    torch.manual_seed(0)
    img = torch.zeros(256, 28, 28)
    img[:, 6:22, 13:15] = 1.0
    slanted = random_affine(img.view(256, -1), rotate=0, shear=0.3)  # shifted by up to 2 px too
    before = _slant(slanted.view(256, 28, 28)).abs()
    x = slanted.clone().requires_grad_()
    out = Deskew()(x)
    after = out.detach().view(256, 28, 28)
    assert before.max() > 0.2 and _slant(after).abs().max() < 0.03
    assert torch.allclose(after.sum((1, 2)), slanted.sum(1), rtol=0.05)  # the ink stays
    cols = (after.sum(1) * torch.arange(28.0)).sum(1) / after.sum((1, 2))
    assert (cols - 13.5).abs().max() < 0.3  # centred on the centre of mass
    out.sum().backward()
    assert x.grad.abs().sum() > 0  # VAT's gradient passes through


def test_deskew_param_puts_deskew_in_front_of_the_manager_network():
    model = build_model(model_config({"moe_vae.experts": 3, "net.latent_dim": 4, "net.hidden": 32,
                                      "moe_vae.manager.deskew": True}))
    assert isinstance(model.manager[0], Deskew)
    assert model(torch.rand(8, 784))["loss"].isfinite()


@pytest.mark.parametrize("key, value", [("augment_shear", -0.1), ("augment_stroke", 1.5),
                                        ("augment_rotate", float("nan"))])
def test_warp_params_reject_bad_values(key, value):
    with pytest.raises(ValueError, match=key):
        ManagerConfig(**{key: value})


@pytest.mark.parametrize("kind", ["moe_vae", "hmoe_vae"])
def test_augment_from_adds_the_warp_term_only_after_its_epochs(kind):
    torch.manual_seed(0)
    spec = {f"{kind}.manager.{k}": v for k, v in {**MANAGER, "augment_from": 2}.items()}
    model = build_model(model_config({"kind": kind, **spec, f"{kind}.experts": 3,
                                      "net.latent_dim": 4, "net.hidden": 32}))
    x = (torch.rand(8, 784) < 0.3).float()
    for epoch, warped in ((0, False), (1, False), (2, True), (5, True)):
        model.set_epoch(epoch)
        assert ("augment_consistency" in model(x)) == warped, epoch
    with pytest.raises(ValueError, match="augment_from"):
        ManagerConfig(augment_from=-1)


def test_a_model_file_stores_augment_from_only_where_it_is_set(tmp_path):
    """A key added later leaves the files written before it as they were (their DVC hashes
    stay true) and reads back as set."""
    from pipeline.models.checkpoint import load_model, model_state, save_model

    default, later = (build_model(model_config({"moe_vae.experts": 2, "net.hidden": 8,
                                                "moe_vae.manager.augment_from": n})) for n in (0, 3))
    assert "augment_from" not in model_state(default)["config"]["moe_vae"]["manager"]
    assert model_state(later)["config"]["moe_vae"]["manager"]["augment_from"] == 3
    save_model(later, tmp_path / "m.pt")
    save_model(default, tmp_path / "d.pt")
    assert load_model(tmp_path / "m.pt").spec.manager.augment_from == 3
    assert load_model(tmp_path / "d.pt").spec.manager.augment_from == 0


def test_manager_warmup_detaches_the_expert_loss_from_the_manager():
    torch.manual_seed(0)
    model = build_model(small(manager_warmup_epochs=1))
    x = torch.rand(8, 784)

    def manager_grad(epoch):
        model.set_epoch(epoch)
        model.zero_grad()
        model(x)["expected_expert_loss"].backward()
        return max(p.grad.abs().max().item() if p.grad is not None else 0.0
                   for p in model.manager.parameters())

    assert manager_grad(0) == 0  # warm-up: experts train under the manager's choice
    assert manager_grad(1) > 0  # afterwards the expert losses shape the choice too


def test_after_manager_epochs_the_manager_stays_fixed_and_only_the_experts_train():
    """manager_epochs: 1 — in epoch 2 the manager (weights and batch-norm statistics) does
    not move although Adam holds momentum for it, its terms are not even computed, and
    the experts go on training under its choices; scoring (eval) still sees every term."""
    from pipeline.training.loop import make_optimizer

    torch.manual_seed(0)
    spec = {f"moe_vae.manager.{k}": v for k, v in MANAGER.items()}
    model = build_model(model_config({**spec, "moe_vae.experts": 3, "moe_vae.manager_epochs": 1,
                                      "net.latent_dim": 4, "net.hidden": 32}))
    opt = make_optimizer(model, 1e-2)
    x = (torch.rand(16, 784) < 0.3).float()

    def step(epoch):
        model.set_epoch(epoch)
        model.train()
        parts = model(x)
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        return parts

    def copy(module):
        return {k: v.clone() for k, v in module.state_dict().items()}

    assert "consistency" in step(0) and model.manager.training
    manager, experts = copy(model.manager), copy(model.encoders)
    parts = step(1)
    assert set(parts) == {"loss", "expected_expert_loss", "balancing_loss", "kl"}
    assert torch.equal(parts["loss"], parts["expected_expert_loss"])
    assert model.training and not model.manager.training  # batch norm: running statistics kept
    assert all(torch.equal(v, manager[k]) for k, v in model.manager.state_dict().items())
    assert all(p.grad is None for p in model.manager.parameters())
    assert any(not torch.equal(v, experts[k]) for k, v in model.encoders.state_dict().items())
    assert "consistency" in model.eval()(x)


def test_imsat_loss_can_be_scored_without_grad():
    """The sweep scores held-out images under no_grad; VAT's power iteration still needs
    its own gradient there, and the loss is the one a training step sees."""
    torch.manual_seed(0)
    model = build_model(small(**IMSAT)).eval()
    x = torch.rand(8, 784)
    torch.manual_seed(1)
    with torch.no_grad():
        scored = model(x)
    torch.manual_seed(1)
    trained = model(x)
    assert scored["consistency"] > 0 and torch.equal(scored["loss"], trained["loss"].detach())


def test_knn_radius_is_the_kth_neighbour_distance_over_its_median():
    pixels = torch.randint(0, 256, (50, 784), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    pixels[7] = pixels[3]  # a duplicate: its nearest neighbour is at distance 0
    x = pixels.double() / 255
    d = torch.cdist(x, x).fill_diagonal_(float("inf"))  # by hand: all pairs, not itself
    kth = d.sort(1).values[:, 2]  # 3rd nearest other image
    got = knn_radius(pixels, 3, chunk=16)  # chunks cross the diagonal at every offset
    assert torch.allclose(got.double(), kth / kth.median(), rtol=1e-4)
    # 0 up to float32 cancellation in |a|^2 - 2ab + |b|^2 (about 1e-3 of a typical distance)
    assert knn_radius(pixels, 1)[[3, 7]].max() < 5e-3


def test_vat_takes_a_radius_per_image():
    """eps (B,) = c everywhere is the fixed-radius loss (same noise); raising one image's
    radius raises the loss, lowering all of them lowers it."""
    net = ManagerMLP([784, 32, 3], "relu", batchnorm=False)
    f = lambda v: net(v)[0]  # noqa: E731
    x = torch.rand(6, 784, generator=torch.Generator().manual_seed(1))
    log_p = torch.log_softmax(f(x), -1).detach()

    def loss(eps):
        torch.manual_seed(0)
        return vat_loss(f, x, log_p, eps).item()

    assert loss(torch.full((6,), 1.5)) == pytest.approx(loss(1.5), rel=1e-6)
    bigger = torch.full((6,), 1.5)
    bigger[2] = 4.0
    assert loss(bigger) > loss(1.5) > loss(torch.full((6,), 0.2))


def test_knn_consistency_radius_reaches_vat_and_only_with_knn():
    from pipeline.models.registry import model_config, side_input

    knn = {"kind": "moe_vae", "moe_vae.experts": 3, "net.latent_dim": 4, "net.hidden": 16,
           "moe_vae.manager.consistency_weight": 1.0, "moe_vae.manager.consistency_radius": "knn",
           "moe_vae.manager.consistency_knn": 2}
    pixels = torch.randint(0, 256, (20, 784), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    radius = side_input(model_config(knn), pixels)
    assert radius.shape == (20,) and torch.allclose(radius, knn_radius(pixels, 2))
    assert side_input(model_config({**knn, "moe_vae.manager.consistency_radius": "fixed"}), pixels) is None
    assert side_input(model_config({**knn, "kind": "hmoe_vae", "hmoe_vae.manager.consistency_weight": 1.0,
                                    "hmoe_vae.manager.consistency_radius": "knn"}), pixels) is not None
    torch.manual_seed(0)
    model = build_model(model_config(knn))
    x = model.prepare(pixels[:8].float() / 255)

    def consistency(r):
        torch.manual_seed(1)
        return model(x, r)["consistency"].item()

    assert consistency(None) == pytest.approx(consistency(torch.ones(8)), rel=1e-6)
    assert consistency(torch.full((8,), 3.0)) > consistency(torch.full((8,), 0.2))
