"""Shared fixtures: one loopback-only Ray instance per session, MNIST, tiny synthetic IDX."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

from pipeline.core.ray_env import QUIET_ENV  # noqa: E402  (imports no ray)

# Ray reads these when first imported; they must precede any `import ray` in the session.
for _k, _v in {**QUIET_ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(_k, _v)

def model_cfg(**flat):
    """A ModelConfig from the flat keyword names of format-2 configs (experts=3,
    manager_input="grey", ...), converted by the same upgrade that loads old model files."""
    from pipeline.core.schema import build
    from pipeline.models.checkpoint import V2_KEYS, upgrade_v2
    from pipeline.models.registry import ModelConfig

    unknown = sorted(set(flat) - set(V2_KEYS) - {"kind"})
    assert not unknown, f"model_cfg: {unknown} are not format-2 names; use registry.model_config"
    return build(ModelConfig, upgrade_v2({"kind": "moe_vae", **flat}), "model")


MNIST = ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {MNIST}")
    return MNIST


def pytest_collection_modifyitems(items):
    """Every test that starts Ray is in the slow tier (`pytest -m "not slow"` skips it);
    modules that run `dvc repro`, build namespaces or kill workers mark themselves."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (Ray on 2 cores: start it once)."""
    os.environ.pop("RAY_ADDRESS", None)
    from pipeline.core.ray_env import init_ray

    init_ray(num_cpus=2)
    import ray

    yield ray
    ray.shutdown()


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_raw(dirpath: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """Four small synthetic MNIST-format files in `dirpath`."""
    from pipeline.data.idx import FILES, IMAGES_MAGIC, LABELS_MAGIC

    rng = np.random.default_rng(seed)
    dirpath.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        img_name, lbl_name = FILES[split]
        write_idx(dirpath / img_name, rng.integers(0, 256, (n, 28, 28)), IMAGES_MAGIC)
        write_idx(dirpath / lbl_name, rng.integers(0, 10, n), LABELS_MAGIC)
    return dirpath


@pytest.fixture
def tiny_shards(tmp_path) -> Path:
    """Synthetic shards: 400 train / 40 test images of blurry blobs (learnable)."""
    from pipeline.data.idx import FILES, IMAGES_MAGIC, LABELS_MAGIC
    from pipeline.data.shards import write_shards

    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    yy, xx = np.mgrid[:28, :28]
    counts = {"train": 400, "test": 40}
    for split, n in counts.items():
        labels = rng.integers(0, 10, n)
        cx, cy = 6 + 2 * labels, 6 + 16 * (labels % 2)  # position encodes the class
        imgs = 255 * np.exp(-((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2) / 18)
        img_name, lbl_name = FILES[split]
        write_idx(raw / img_name, imgs, IMAGES_MAGIC)
        write_idx(raw / lbl_name, labels, LABELS_MAGIC)
    out = tmp_path / "shards"
    write_shards(out, raw, shards=2, train_limit=None, counts=counts, md5=None)
    return out
