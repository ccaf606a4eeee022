"""Parquet shards -> arrays, checked against the manifest prepare wrote (shards.py):
what train, evaluate and the sweep read."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.data.idx import PIXELS
from pipeline.data.shards import sha256_file


@dataclass
class Split:
    index: np.ndarray  # (N,) int32
    pixels: np.ndarray  # (N, 784) uint8
    labels: Optional[np.ndarray] = None  # (N,) uint8, only when asked for (evaluation)


def read_manifest(shard_dir: Path) -> dict:
    path = Path(shard_dir) / "manifest.json"
    if not path.exists():
        raise DataError(f"{path} is missing; run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text())


def load_split(shard_dir: Path, split: str, with_labels: bool = False) -> Split:
    """Read every shard of `split` in order, verifying their checksums."""
    shard_dir = Path(shard_dir)
    entries = read_manifest(shard_dir)["splits"][split]
    columns = ["index", "pixels"] + (["label"] if with_labels else [])
    parts = []
    for e in entries:
        path = shard_dir / e["file"]
        if sha256_file(path) != e["sha256"]:
            raise DataError(f"{path}: checksum differs from manifest.json; re-run the prepare stage")
        parts.append(pq.read_table(path, columns=columns))
    table = pa.concat_tables(parts)
    pixels = table.column("pixels").combine_chunks().flatten().to_numpy().reshape(-1, PIXELS)
    return Split(index=table.column("index").to_numpy(), pixels=pixels,
                 labels=table.column("label").to_numpy() if with_labels else None)
