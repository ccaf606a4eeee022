"""train.holdout and train.early_stopping: the last training rows are scored after every
epoch and never trained on; with a patience, the run stops and keeps its best epoch."""
import json

import pytest
import torch

from pipeline.core.errors import ConfigError, DataError
from pipeline.data.load import load_split
from pipeline.evaluation.metrics import prepare_test
from pipeline.models.checkpoint import model_from_state
from pipeline.params import Params, params_from_dict
from pipeline.training.driver import check_before_ray, fit, write_outputs
from pipeline.models.registry import build_model
from pipeline.training.loop import best_epoch, held_out_nll, kept_state, out_of_patience


def rows(*scores):
    return [{"epoch": i + 1, "held_out_nll": s} for i, s in enumerate(scores)]


def test_patience_counts_the_epochs_since_the_best_one():
    assert best_epoch(rows(90, 88, 89, 88)) == 2  # the first of ties: a tie is no improvement
    assert not out_of_patience(rows(90, 88, 89), 2)
    assert out_of_patience(rows(90, 88, 89, 88), 2)
    assert not out_of_patience(rows(90, 88, 89, 88), 0)  # 0: off
    assert not out_of_patience([], 3)


def test_the_kept_best_weights_do_not_follow_training():
    # model_state's CPU tensors share the live weights: the best epoch's must be a copy
    model = build_model(params_from_dict({"model": {"net": {"latent_dim": 4, "hidden": 8}}}).model)
    kept = kept_state(model)
    before = {k: v.clone() for k, v in kept["state_dict"].items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in before.items())


def test_early_stopping_without_held_out_images_is_one_line_naming_the_fix():
    with pytest.raises(ConfigError) as e:
        params_from_dict({"train": {"early_stopping": 5}})
    assert "train.early_stopping" in str(e.value) and "train.holdout" in str(e.value)
    with pytest.raises(ConfigError, match="holdout_samples"):
        params_from_dict({"train": {"holdout": 10, "holdout_samples": 0}})
    # the defaults change nothing: every recorded run keeps its params file
    assert Params().train.holdout == Params().train.early_stopping == 0


def test_a_holdout_that_leaves_less_than_a_batch_fails_before_ray(tiny_shards):
    params = params_from_dict({"train": {"holdout": 380, "batch_size": 40}})
    with pytest.raises(DataError) as e:
        check_before_ray(params, tiny_shards)
    assert "train.holdout=380 leaves 20 of the 400" in str(e.value) and "lower train.holdout" in str(e.value)


def tiny(tmp_path, **train) -> Params:
    return params_from_dict({
        "model": {"moe_vae": {"experts": 3}, "net": {"latent_dim": 4, "hidden": 32}},
        "train": {"epochs": 6, "batch_size": 40, "lr": 3e-3, "holdout": 100, "holdout_samples": 4,
                  "storage_path": str(tmp_path / "ray_results"), **train},
    })


def test_held_out_images_are_scored_every_epoch_and_the_best_epoch_is_kept(ray_session, tiny_shards,
                                                                           tmp_path):
    params = tiny(tmp_path, early_stopping=10)
    state = fit(params, tiny_shards, log=lambda s: None)
    hist = state["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4, 5, 6]
    assert all(r["held_out_nll"] > 0 for r in hist) and hist[-1]["held_out_nll"] < hist[0]["held_out_nll"]
    # the model returned is the best epoch's: its score on the held-out rows is that epoch's
    best = state["best_epoch"]
    assert best == best_epoch(hist)
    model = model_from_state(state["model"])
    x = prepare_test(model, load_split(tiny_shards, "train").pixels[-100:], params.evaluate.seed)
    assert held_out_nll(model, x, 4, params.evaluate.seed) == pytest.approx(hist[best - 1]["held_out_nll"],
                                                                           rel=1e-5)
    out = tmp_path / "out"
    write_outputs(state, params, out / "model.pt", out / "live", out / "run.json", log=lambda s: None)
    summary = (out / "live" / "metrics.json").read_text()
    assert f'"best_epoch": {best}' in summary and '"held_out_nll"' in summary
    # the scoring is part of the recipe's time: the run record counts it
    record = json.loads((out / "run.json").read_text())
    assert all(t["held_out_seconds"] > 0 for t in record["epochs"])
    assert record["train_seconds"] >= sum(t["seconds"] + t["held_out_seconds"] for t in record["epochs"])


def test_a_run_whose_held_out_score_stops_improving_stops(ray_session, tiny_shards, tmp_path):
    # lr 1e-12 leaves the weights as they are: every epoch scores the same, none improves on
    # epoch 1, so patience 2 ends the run after epoch 3 of 20
    lines = []
    state = fit(tiny(tmp_path, lr=1e-12, epochs=20, early_stopping=2), tiny_shards, log=lines.append)
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3] and state["best_epoch"] == 1
    assert torch.equal(torch.tensor([r["held_out_nll"] for r in state["history"]]).diff().abs().max(),
                       torch.tensor(0.0, dtype=torch.float64))
