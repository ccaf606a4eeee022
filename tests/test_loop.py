"""The step loop: no host sync per step (loss parts stay on the device until the epoch
ends), and a non-finite loss still reported with the epoch and step it first appeared."""
import math
import os

import pytest
import torch

from pipeline.models.registry import build_model
from pipeline.params import params_from_dict
from pipeline.training import loop
from pipeline.training.loop import CHECK_EVERY, NonFiniteLossError, make_optimizer, train_epoch


def tiny_model():
    torch.manual_seed(0)
    return build_model(params_from_dict({"model": {"moe_vae": {"experts": 3},
                                                   "net": {"latent_dim": 4, "hidden": 16}}}).model)


def pixels(n=1000):
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


def test_the_step_loop_reads_the_device_once_per_check_not_once_per_step(monkeypatch):
    """Every way a tensor reaches Python (item, float, int, bool, tolist) is counted over
    an epoch of 120 steps: a handful per non-finite check and one read at the end,
    where the old loop made 1 + (number of loss parts) reads every step."""
    reads = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _real=real, _name=name, **k: reads.append(_name) or _real(self, *a, **k))
    model = tiny_model()
    steps = 120
    parts = train_epoch(model, model, make_optimizer(model, 1e-3), pixels(), batch=8, steps=steps,
                        epoch=0, seed=0)
    checks = math.ceil(steps / CHECK_EVERY)  # after steps 50, 100 and the last
    # per check: the first bad step and its loss; at the end: the sums, and their total over ranks
    assert len(reads) <= 2 * checks + 2, reads
    assert math.isfinite(parts["loss"]) and set(parts) >= {"loss", "balancing_loss"}


def test_a_non_finite_loss_is_reported_at_the_step_it_appeared(monkeypatch):
    model = tiny_model()
    real_forward = type(model).forward
    calls = []

    def forward(self, x):  # the 7th step's loss is NaN; the steps after it stay finite
        parts = real_forward(self, x)
        calls.append(1)
        if len(calls) == 7:
            parts = {**parts, "loss": parts["loss"] * float("nan")}
        return parts

    monkeypatch.setattr(type(model), "forward", forward)
    monkeypatch.setattr(loop, "CHECK_EVERY", 10)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at epoch 3, step 7; lower train.lr"):
        train_epoch(model, model, make_optimizer(model, 1e-3), pixels(), batch=8, steps=40, epoch=2, seed=0)
    assert len(calls) == 10  # caught at the first check after it, not at the end of the epoch


def test_a_compiled_step_matches_the_eager_one_and_recompiles_only_when_warm_up_ends(monkeypatch):
    """train.compile: the same losses within float rounding, epoch after epoch; the epoch
    counter itself is no compile guard (MoEVAE reads a warming_up bool)."""
    import torch._dynamo

    def run(mode):
        torch.manual_seed(0)
        model = build_model(params_from_dict({"model": {"moe_vae": {"experts": 3, "warmup_epochs": 1},
                                                        "net": {"latent_dim": 4, "hidden": 16}}}).model)
        step, opt = loop.compiled(model, mode), make_optimizer(model, 1e-3)
        epochs = []
        for epoch in range(4):
            if epoch == 2 and mode != "off":  # compiled twice by now: warming up, then not
                monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
            epochs.append(train_epoch(step, model, opt, pixels(200), batch=20, steps=5, epoch=epoch, seed=0))
        return epochs

    torch._dynamo.reset()
    try:
        eager, fused = run("off"), run("default")
    finally:
        torch._dynamo.reset()
    for e, f in zip(eager, fused):
        assert f.keys() == e.keys()
        for k in e:
            assert f[k] == pytest.approx(e[k], rel=1e-4, abs=1e-5), k


def test_deterministic_mode_keeps_the_cpu_numbers_bit_for_bit(monkeypatch):
    """train.deterministic pins GPU kernels; on a CPU it changes nothing (the run record's
    bit-for-bit claim holds either way)."""
    def run():
        model = tiny_model()
        parts = train_epoch(model, model, make_optimizer(model, 1e-3), pixels(200), batch=20, steps=5,
                            epoch=0, seed=0)
        return parts, model.state_dict()

    before = run()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    try:
        loop.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        after = run()
    finally:
        loop.set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert after[0] == before[0]
    assert all(torch.equal(after[1][k], v) for k, v in before[1].items())


def test_forward_gets_each_batch_its_rows_of_the_side_input(monkeypatch):
    """A kind's side_input (e.g. each image's VAT radius) reaches forward row-aligned with
    the batch: here the side input is the row number, and the grey pixels encode it too."""
    model = tiny_model()
    n = 60
    pixels = torch.zeros(n, 784, dtype=torch.uint8)
    pixels[torch.arange(n), torch.arange(n)] = 255  # row i: one white pixel at i
    seen = []
    real_forward = type(model).forward

    def forward(self, x, side=None):
        seen.append((x.argmax(1), side))  # binarization keeps a 255 pixel white
        return real_forward(self, x)

    monkeypatch.setattr(type(model), "forward", forward)
    train_epoch(model, model, make_optimizer(model, 1e-3), pixels, batch=10, steps=6, epoch=0, seed=0,
                side=torch.arange(n, dtype=torch.float32))
    rows = torch.cat([s for _, s in seen])
    assert all(torch.equal(x, s.long()) for x, s in seen)
    assert sorted(rows.long().tolist()) == list(range(n))  # one epoch: every row once
