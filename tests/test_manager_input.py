"""model.manager_input: grey: the MoE manager reads grey pixels, the experts their binarization."""
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.evaluation.config import EvaluateConfig

from pipeline.evaluation.metrics import evaluate_model
from pipeline.models.registry import build_model
from pipeline.core.tracking import open_live
from pipeline.evaluation.plots import log_evaluation_plots
from pipeline.training.restarts import cluster_information
from pipeline.training.loop import train_epoch
from tests.conftest import model_cfg


def small(**kw):
    return model_cfg(kind="moe_vae", experts=3, latent_dim=4, hidden=32, likelihood="bernoulli", **kw)


def grey_images(n, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed))


def test_prepare_stacks_the_binarization_and_the_grey_image():
    grey = grey_images(6)
    model = build_model(small(manager_input="grey"))
    x = model.prepare(grey, generator=torch.Generator().manual_seed(1))
    assert x.shape == (6, 2, 784)
    torch.testing.assert_close(x[:, 1], grey)
    binary = build_model(small()).prepare(grey, generator=torch.Generator().manual_seed(1))
    assert binary.shape == (6, 784) and set(binary.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(model.pixels(x), binary)  # the same draw: what the experts model


def test_the_manager_reads_grey_pixels_and_its_terms_train_it():
    torch.manual_seed(0)
    model = build_model(small(manager_input="grey", entropy_weight=1, marginal_entropy_weight=1,
                              consistency_weight=1, augment_weight=1))
    grey = grey_images(8)
    x = model.prepare(grey, generator=torch.Generator().manual_seed(0))
    expected = F.softmax(model.manager(grey)[0], -1)
    torch.testing.assert_close(model.cluster_probs(x), expected)
    assert not torch.allclose(model.cluster_probs(x), F.softmax(model.manager(x[:, 0])[0], -1))
    out = model(x)
    assert torch.isfinite(out["loss"]) and {"consistency", "augment_consistency"} <= out.keys()
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.manager.parameters())


def test_the_experts_score_the_binarized_image_not_the_grey_one():
    """A constant manager ignores its input, so the grey model's loss and log-weights must
    equal those of a sample-input model with the same weights on the binarized images."""
    torch.manual_seed(0)
    grey_model = build_model(small(manager_input="grey"))
    for p in grey_model.manager.parameters():
        torch.nn.init.zeros_(p)  # uniform p(k|x) whatever it reads
    sample_model = build_model(small())
    sample_model.load_state_dict(grey_model.state_dict())
    x = grey_model.prepare(grey_images(5), generator=torch.Generator().manual_seed(2))
    for method in (lambda m, v: m(v)["loss"], lambda m, v: m.log_importance_weights(v, 7),
                   lambda m, v: m.reconstruct(v)):
        torch.manual_seed(3)
        got = method(grey_model, x)
        torch.manual_seed(3)
        torch.testing.assert_close(got, method(sample_model, x[:, 0]))


def test_training_evaluation_plots_and_restart_score_run_on_grey_input(tmp_path):
    torch.manual_seed(0)
    model = build_model(small(manager_input="grey", entropy_weight=1, consistency_weight=1))
    pixels = (grey_images(60) * 255).to(torch.uint8)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    parts = train_epoch(model, model, opt, pixels, batch=20, steps=3, epoch=0, seed=0)
    assert np.isfinite(parts["loss"])
    assert 0.0 <= cluster_information(model, pixels) <= np.log(3) + 1e-9
    labels = np.arange(60) % 10
    result = evaluate_model(model, pixels.numpy(), labels, EvaluateConfig(iw_samples=4, iw_chunk=4),
                            log=lambda s: None)
    assert result["x"].shape == (60, 2, 784) and result["clusters"].shape == (60,)
    assert np.isfinite(result["metrics"]["test_log_likelihood"])
    log_evaluation_plots(open_live(tmp_path / "live"), model, labels, result, seed=0)
    assert (tmp_path / "live/plots/images/reconstructions.png").stat().st_size > 0
