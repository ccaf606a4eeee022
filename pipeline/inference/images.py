"""Images from outside the pipeline -> (N, 784) uint8 pixels, one name per image; and a
picture back out as a PNG file (save_png).

Read: image files PIL opens (PNG above all), a folder of PNGs, an IDX images file
(MNIST's format, gzipped or not) and a Parquet shard as `prepare` writes it. Every image
must be 28x28 (MNIST's size); colour images are converted to grey (PIL's ITU-R 601-2
luma). The models learnt MNIST's white digits on a black background: scans of dark ink
on white paper need `invert=True`.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.io import atomic_path
from pipeline.data.idx import IMAGES_MAGIC, PIXELS, read_idx

SIDE = 28  # MNIST's images are SIDE x SIDE, the only size a model file reads
IDX_SUFFIXES = (".gz", ".idx", ".idx3", ".ubyte")
PathLike = Union[str, Path]


def wrong_size(path: PathLike, size: str) -> DataError:
    return DataError(f"{path}: {size} images, but the models read {SIDE}x{SIDE} (MNIST's size); "
                     f"resize them to {SIDE}x{SIDE} first")


def read_png(path: PathLike) -> np.ndarray:
    """One image file -> (784,) uint8 grey pixels (colour: PIL's convert("L"))."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.size != (SIDE, SIDE):
                raise wrong_size(path, f"{img.size[0]}x{img.size[1]}")
            grey = img.convert("L")  # RGB(A), palette, 1-bit: luma only, alpha dropped
            return np.asarray(grey, dtype=np.uint8).reshape(PIXELS)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not an image PIL can read ({e}); give PNG files, a folder of "
                        f"them, an IDX file or a Parquet shard") from None


def read_png_folder(folder: PathLike) -> Tuple[np.ndarray, List[str]]:
    """Every *.png directly in `folder`, by name -> ((N, 784) uint8, their paths)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise DataError(f"{folder}: no .png files in this folder; put 28x28 PNGs there or "
                        f"name the files themselves")
    return np.stack([read_png(p) for p in files]), [str(p) for p in files]


def idx_header(path: Path) -> Tuple[bool, Tuple[int, int, int]]:
    """(gzipped?, (N, rows, cols)) of an IDX images file, from its first 16 bytes."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            head = f.read(16)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}); re-copy it") from None
    magic = struct.unpack(">I", head[:4])[0] if len(head) >= 4 else None
    if magic != IMAGES_MAGIC or len(head) < 16:  # 2049: a labels file
        raise DataError(f"{path}: magic number {magic}, not an IDX images file ({IMAGES_MAGIC}); "
                        f"give one such as t10k-images-idx3-ubyte.gz")
    return gzipped, struct.unpack(">3I", head[4:])


def read_idx_images(path: PathLike) -> np.ndarray:
    """An IDX images file (magic 2051, (N, 28, 28)), gzipped or not -> (N, 784) uint8."""
    path = Path(path)
    gzipped, dims = idx_header(path)
    if dims[1:] != (SIDE, SIDE):
        raise wrong_size(path, f"{dims[1]}x{dims[2]}")
    if gzipped:  # the pipeline's own reader checks dimensions and length
        return read_idx(path, IMAGES_MAGIC, dims[0], (SIDE, SIDE)).reshape(-1, PIXELS)
    body = np.fromfile(path, dtype=np.uint8, offset=16)
    if body.size != dims[0] * PIXELS:
        raise DataError(f"{path}: {body.size} data bytes, expected {dims[0] * PIXELS}; "
                        f"the file is truncated")
    return body.reshape(-1, PIXELS)


def read_shard(path: PathLike) -> Tuple[np.ndarray, List[str]]:
    """One Parquet shard of `prepare` (pipeline/data/shards.py) -> ((N, 784) uint8, names
    `<path>:<index>`, index being the row in the original split)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e}); rerun the prepare stage") from None
    if "pixels" not in table.column_names:
        raise DataError(f"{path}: no `pixels` column; give a shard the prepare stage wrote")
    column = table.column("pixels")
    width = getattr(column.type, "list_size", None)
    if width != PIXELS:
        side = int(round(width ** 0.5)) if width else 0
        raise wrong_size(path, f"{side}x{side}" if side * side == width else f"{width}-pixel")
    pixels = column.combine_chunks().flatten().to_numpy().reshape(-1, PIXELS)
    index = (table.column("index").to_numpy() if "index" in table.column_names
             else np.arange(len(pixels)))
    return pixels.astype(np.uint8, copy=False), [f"{path}:{i}" for i in index]


def read_one(path: PathLike) -> Tuple[np.ndarray, List[str]]:
    """One argument of the CLI -> ((N, 784) uint8, N names)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing; give PNG files, a folder of them, an IDX file or "
                        f"a Parquet shard")
    if path.is_dir():
        return read_png_folder(path)
    if path.suffix.lower() == ".parquet":
        return read_shard(path)
    if path.suffix.lower() in IDX_SUFFIXES or "-ubyte" in path.name:
        pixels = read_idx_images(path)
        return pixels, [f"{path}:{i}" for i in range(len(pixels))]
    return read_png(path)[None], [str(path)]


def read_images(paths: Sequence[PathLike], invert: bool = False) -> Tuple[np.ndarray, List[str]]:
    """Image files, folders of PNGs, IDX files and Parquet shards, in the order given ->
    ((N, 784) uint8 pixels, white ink on black as MNIST's; N names). `invert`: 255 - pixels,
    for dark ink on a light background."""
    if not paths:
        raise DataError("no images given; name PNG files, folders of them, IDX files or Parquet shards")
    parts, names = [], []
    for p in paths:
        pixels, found = read_one(p)
        parts.append(pixels)
        names.extend(found)
    pixels = np.concatenate(parts)  # (N, 784)
    return (255 - pixels if invert else pixels), names


def save_png(image: np.ndarray, path: PathLike) -> None:
    """(H, W) uint8 -> a grey PNG at `path`, written atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(tmp, format="PNG")
