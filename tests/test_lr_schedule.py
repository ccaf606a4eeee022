"""train.lr_schedule: constant (every recorded run) or cosine, set at the start of each epoch
so that a run resumed from a checkpoint takes the same lr as an uninterrupted one."""
import math

import pytest

from pipeline.core.errors import ConfigError
from pipeline.params import params_from_dict
from pipeline.training.driver import fit


def train_config(**train):
    return params_from_dict({"train": train}).train


def test_cosine_anneals_from_lr_to_near_zero_and_constant_stays():
    cos = train_config(epochs=10, lr=2e-3, lr_schedule="cosine")
    assert cos.epoch_lr(0) == 2e-3 and cos.epoch_lr(5) == pytest.approx(1e-3)
    assert [cos.epoch_lr(e) for e in range(10)] == sorted((cos.epoch_lr(e) for e in range(10)), reverse=True)
    assert cos.epoch_lr(9) == pytest.approx(2e-3 * (1 - math.cos(math.pi / 10)) / 2) and cos.epoch_lr(9) > 0
    const = train_config(epochs=10, lr=2e-3)
    assert const.lr_schedule == "constant" and {const.epoch_lr(e) for e in range(10)} == {2e-3}
    # the schedule multiplies what lr_scaling made of lr (4 workers at batch_scope: worker)
    wide = train_config(epochs=10, lr=2e-3, lr_schedule="cosine", num_workers=4, batch_scope="worker")
    assert wide.epoch_lr(5) == pytest.approx(2e-3 * 2 / 2)


def test_an_unknown_schedule_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError) as e:
        train_config(lr_schedule="step")
    msg = str(e.value)
    assert "\n" not in msg and "lr_schedule" in msg and "'step'" in msg and "constant, cosine" in msg


def test_a_cosine_run_steps_each_epoch_at_its_lr(ray_session, tiny_shards, tmp_path):
    params = params_from_dict({
        "model": {"moe_vae": {"experts": 3}, "net": {"latent_dim": 4, "hidden": 32}},
        "train": {"epochs": 4, "batch_size": 40, "lr": 3e-3, "lr_schedule": "cosine",
                  "storage_path": str(tmp_path / "ray_results")}})
    state = fit(params, tiny_shards, log=lambda s: None)
    assert [t["lr"] for t in state["timings"]] == pytest.approx(
        [3e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
