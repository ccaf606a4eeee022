"""The neighbours stage's cache: written whole, tied to its shards, and read by a run
instead of computing the same radii (bit for bit)."""
import json

import numpy as np
import pytest
import torch

from pipeline.core.errors import DataError
from pipeline.data.load import load_split
from pipeline.data.neighbours import DISTANCES, META, knn_distances, read_neighbours, write_neighbours
from pipeline.models.manager import knn_radius, radius_from
from pipeline.models.registry import model_config, side_input


def test_distances_are_the_k_nearest_other_rows_in_order():
    x = torch.tensor([[0.0], [3.0], [4.0], [10.0]]) * 255 / 10  # 1-D points 0, .3, .4, 1
    d = knn_distances(x.to(torch.uint8), 2)
    expect = torch.tensor([[0.3, 0.4], [0.1, 0.3], [0.1, 0.4], [0.6, 0.7]])
    assert torch.allclose(d, expect, atol=2e-3) and (d[:, 1] >= d[:, 0]).all()


def test_the_cache_gives_the_radii_a_run_computes(tiny_shards, tmp_path):
    meta = write_neighbours(tiny_shards, tmp_path / "nb", 5)
    assert meta["k"] == 5 and meta["rows"] == 400
    assert sorted(p.name for p in (tmp_path / "nb").iterdir()) == [DISTANCES, META]
    cached = read_neighbours(tmp_path / "nb", tiny_shards)
    pixels = torch.from_numpy(load_split(tiny_shards, "train").pixels.copy())
    for k in (1, 3, 5):
        assert torch.equal(radius_from(cached, k), knn_radius(pixels, k))
    cfg = model_config({"moe_vae.manager.consistency_weight": 1.0,
                        "moe_vae.manager.consistency_radius": "knn", "moe_vae.manager.consistency_knn": 3})
    assert torch.equal(side_input(cfg, pixels, cached), knn_radius(pixels, 3))
    deeper = model_config({"moe_vae.manager.consistency_weight": 1.0,
                           "moe_vae.manager.consistency_radius": "knn", "moe_vae.manager.consistency_knn": 7})
    assert torch.equal(side_input(deeper, pixels, cached), knn_radius(pixels, 7))  # beyond k: computed


def test_a_cache_of_other_shards_or_none_is_a_one_line_error(tiny_shards, tmp_path):
    with pytest.raises(DataError, match="holds no neighbour distances; run `dvc repro neighbours`"):
        read_neighbours(tmp_path / "nowhere", tiny_shards)
    write_neighbours(tiny_shards, tmp_path / "nb", 2)
    meta = json.loads((tmp_path / "nb" / META).read_text())
    (tmp_path / "nb" / META).write_text(json.dumps({**meta, "train_sha256": "0" * 64}))
    with pytest.raises(DataError, match="computed from other shards") as e:
        read_neighbours(tmp_path / "nb", tiny_shards)
    assert "\n" not in str(e.value)
    (tmp_path / "nb" / META).write_text(json.dumps(meta))
    np.save(tmp_path / "nb" / DISTANCES, np.zeros((3, 2), np.float32))
    with pytest.raises(DataError, match=r"has shape \(3, 2\), not \(400, 2\)"):
        read_neighbours(tmp_path / "nb", tiny_shards)
    assert read_neighbours(None, tiny_shards) is None
