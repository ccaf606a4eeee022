"""Ray Train: 2-worker DDP on tiny data, one-line failures, loopback-only listeners."""
import dataclasses

import psutil
import pytest
import torch

from pipeline.params import Params, params_from_dict
from pipeline.models.checkpoint import model_from_state
from pipeline.core.errors import TrainError
from pipeline.training.driver import fit


def tiny_params(tmp_path, **train) -> Params:
    return params_from_dict({
        "model": {"moe_vae": {"experts": 3}, "net": {"latent_dim": 4, "hidden": 32}},
        "train": {"epochs": 2, "batch_size": 40, "lr": 3e-3, "num_workers": 2,
                  "storage_path": str(tmp_path / "ray_results"), **train},
    })


def test_ddp_two_workers_learns_and_returns_a_rebuildable_model(ray_session, tiny_shards, tmp_path):
    params = tiny_params(tmp_path, epochs=3)
    lines = []
    state = fit(params, tiny_shards, log=lines.append)
    hist = state["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert {"expected_expert_loss", "balancing_loss", "images_per_s"} <= set(hist[0])
    assert any("2 worker(s)" in line for line in lines)
    model = model_from_state(state["model"])
    assert model.cfg == params.model
    assert model(torch.rand(2, 784))["loss"].isfinite()

    # Same params again: the run name is stable, so it resumes from the last
    # checkpoint (here: already finished) instead of training from scratch.
    again = fit(params, tiny_shards, log=lines.append)
    assert again["history"] == hist  # includes wall-clock seconds: nothing was retrained


def test_nan_loss_is_one_line_naming_epoch_and_step(ray_session, tiny_shards, tmp_path):
    params = tiny_params(tmp_path, lr=1e12, epochs=1)
    with pytest.raises(TrainError) as e:
        fit(params, tiny_shards, log=lambda s: None)
    msg = str(e.value)
    assert "non-finite loss" in msg and "epoch 1, step" in msg and "\n" not in msg


def test_more_workers_than_shards_fails_before_ray_work(tiny_shards, tmp_path):
    from pipeline.core.errors import DataError

    params = dataclasses.replace(tiny_params(tmp_path), train=dataclasses.replace(
        tiny_params(tmp_path).train, num_workers=4))
    with pytest.raises(DataError, match="exceeds the 2 training shards"):
        fit(params, tiny_shards, log=lambda s: None)


def test_local_ray_listens_on_loopback_only(ray_session):
    ray_names = ("raylet", "gcs_server", "ray::", "dashboard", "default_worker", "runtime_env")
    exposed = []
    for c in psutil.net_connections(kind="inet"):
        if c.status != psutil.CONN_LISTEN or not c.pid:
            continue
        try:
            proc = psutil.Process(c.pid)
            name = " ".join([proc.name()] + proc.cmdline()[:2])
        except psutil.Error:
            continue
        if any(n in name for n in ray_names) and not c.laddr.ip.startswith(("127.", "::ffff:127.", "::1")):
            exposed.append((name[:60], c.laddr))
    assert not exposed, exposed
