"""The validate stage: recipes are chosen on the last training images, never the test split."""
import json
import sys

import numpy as np
import pytest
import torch

from tests.conftest import model_cfg
from pipeline.core.errors import DataError
from pipeline.data.load import load_split
from pipeline.experiments.validation import validate_run, validation_scores
from pipeline.models.checkpoint import save_model
from pipeline.models.registry import build_model


class Halves(torch.nn.Module):
    """A stand-in manager: cluster 0 for images whose left half is brighter, else 1."""
    has_clusters = True
    encoded = 0  # latent_mean calls: validation clusters by p(k|x) and needs no codes

    def cluster_probs(self, x):
        left = x.view(-1, 28, 28)[..., :14].sum((1, 2)) > x.view(-1, 28, 28)[..., 14:].sum((1, 2))
        return torch.stack([left.float(), 1 - left.float()], 1).clamp(1e-6, 1)

    def latent_mean(self, x):
        self.encoded += 1
        return x[:, :2]

    def prepare(self, x, generator=None):
        return x


def halves(n=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    img = np.zeros((n, 28, 28), np.uint8)
    for i, y in enumerate(labels):
        img[i, :, :14] = 200 if y == 0 else 10
        img[i, :, 14:] = 10 if y == 0 else 200
    return img.reshape(n, -1), labels


def test_scores_are_the_clusters_against_the_labels_and_the_information_without_them():
    pixels, labels = halves()
    model = Halves()
    s = validation_scores(model, pixels, labels)
    assert s["val_cluster_accuracy"] == 1.0 and s["val_images"] == 200 and model.encoded == 0
    assert s["val_mutual_info"] == pytest.approx(-np.log(np.bincount(labels) / 200) @ (np.bincount(labels) / 200),
                                                 abs=1e-3)  # sure assignments: I = H(k)
    flipped = validation_scores(Halves(), pixels, 1 - labels)  # Hungarian: names do not matter
    assert flipped["val_cluster_accuracy"] == 1.0
    noise = validation_scores(Halves(), pixels, np.random.default_rng(1).integers(0, 2, 200))
    assert noise["val_cluster_accuracy"] < 0.65


def test_a_run_is_scored_on_the_last_training_rows_only(tiny_shards, tmp_path, monkeypatch):
    """The test split is never read; the rows are the train split's last ones."""
    torch.manual_seed(0)
    model = tmp_path / "m.pt"
    save_model(build_model(model_cfg(experts=3, latent_dim=2, hidden=8)), model)
    read = []
    import pipeline.experiments.validation as validation
    monkeypatch.setattr(validation, "load_split", lambda *a, **k: read.append(a[1]) or load_split(*a, **k))
    s = validate_run(tiny_shards, model, rows=100)
    assert read == ["train"] and s["val_images"] == 100 and 0 <= s["val_cluster_accuracy"] <= 1
    assert 0 <= s["val_mutual_info"] <= np.log(3) + 1e-6
    assert validate_run(tiny_shards, model, rows=10000)["val_images"] == 400  # fewer: all of them
    with pytest.raises(DataError, match=r"validation rows=0 selects no image; use an integer >= 1"):
        validate_run(tiny_shards, model, rows=0)


def test_the_stage_writes_its_json(tiny_shards, tmp_path, monkeypatch, capsys):
    from stages import validate

    model, out = tmp_path / "m.pt", tmp_path / "v" / "validation.json"
    save_model(build_model(model_cfg(kind="vae", latent_dim=2, hidden=8)), model)
    monkeypatch.setattr(sys, "argv", ["validate", "--shards", str(tiny_shards), "--model", str(model),
                                      "--metrics", str(out), "--rows", "50"])
    validate.main()
    s = json.loads(out.read_text())
    assert np.isnan(s["val_mutual_info"]) and s["val_images"] == 50  # a vae: k-means, no p(k|x)
    assert "validate: val_cluster_accuracy" in capsys.readouterr().out
