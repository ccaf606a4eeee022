"""The raw IDX .gz files of MNIST-like data sets: checksums, validation, download."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.core.errors import DataError

PIXELS = 28 * 28
SPLITS = {"train": 60_000, "test": 10_000}
FILES = {  # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# MD5 of the *decompressed* IDX bytes per dataset: a mirror that re-gzips the files
# (other header, other compression level; Debian's packages do) changes the .gz checksum
# but not these.
DATASET_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {  # offline copy: Debian's dataset-fashion-mnist, /usr/share/datasets
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
MD5 = DATASET_MD5["mnist"]
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


def read_idx(path: Path, magic: int, count: int, shape: Sequence[int],
             md5: Optional[str] = None) -> np.ndarray:
    """Read one gzipped IDX file, checking magic number, item count, shape and content MD5."""
    if not path.exists():
        raise DataError(f"{path} is missing; put the four IDX .gz files of data.dataset in {path.parent}")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # bad gzip header, truncated stream, CRC error
        raise DataError(f"{path}: not a readable gzip file ({e}); delete it and re-download "
                        f"or re-copy it") from e
    ndim = 1 + len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes); re-download or re-copy it")
    got_magic = struct.unpack(">I", raw[:4])[0]
    if got_magic != magic:
        raise DataError(f"{path}: magic number {got_magic} != {magic}; is this the right file?")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if dims != (count, *shape):
        raise DataError(f"{path}: dimensions {dims} != {(count, *shape)}; is this the right file?")
    body = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if body.size != count * int(np.prod(shape, dtype=np.int64)):
        raise DataError(f"{path}: {body.size} data bytes, expected "
                        f"{count * int(np.prod(shape))}; the file is truncated")
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise DataError(f"{path}: content MD5 {hashlib.md5(raw).hexdigest()} != {md5}; the file "
                        f"is corrupt, delete it and re-download or re-copy it")
    return body.reshape(count, *shape)


def load_raw_split(raw_dir: Path, split: str, count: int, md5: Optional[dict] = MD5):
    """Validated (images (N, 784) uint8, labels (N,) uint8) for one split.

    `count` and `md5` default to real MNIST; tests pass their own for small synthetic files.
    """
    img_name, lbl_name = FILES[split]
    md5 = md5 or {}
    images = read_idx(raw_dir / img_name, IMAGES_MAGIC, count, (28, 28),
                      md5.get(img_name)).reshape(count, PIXELS)
    labels = read_idx(raw_dir / lbl_name, LABELS_MAGIC, count, (), md5.get(lbl_name))
    if labels.max() > 9:
        raise DataError(f"{raw_dir / lbl_name}: label {int(labels.max())} outside 0..9")
    return images, labels


def download(raw_dir: Path, dataset: str = "mnist") -> None:
    """Fetch missing IDX files with torchvision's mirrors; one clear line on failure."""
    from torchvision.datasets import MNIST, FashionMNIST
    from torchvision.datasets.utils import download_url

    source = {"mnist": MNIST, "fashion_mnist": FashionMNIST}[dataset]
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, gz_md5 in source.resources:  # torchvision checks the .gz MD5 of its mirrors
        if (raw_dir / name).exists():
            continue
        errors = []
        for mirror in source.mirrors:
            try:
                download_url(mirror + name, root=str(raw_dir), filename=name, md5=gz_md5)
                break
            except Exception as e:  # URLError, HTTPError, socket timeouts, bad checksum
                errors.append(f"{mirror}: {e}")
        if not (raw_dir / name).exists():
            raise DataError(f"could not download {name} ({errors[-1] if errors else 'no mirror'}); "
                            f"with no network, copy the four {dataset} .gz files into {raw_dir}")
