"""Parquet shards -> arrays, checked against the manifest and the schema prepare wrote
(shards.py): what train, evaluate and the sweep read. A shard that breaks that contract
is a one-line DataError naming the file, not a traceback from deep inside a worker."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.core.failures import first_line
from pipeline.data.idx import PIXELS
from pipeline.data.shards import sha256_file


# What shards.py writes: the columns, their Arrow types, and so the pixel range (uint8:
# 0..255, which the models scale to [0, 1]). test_data checks the writer against it.
SHARD_SCHEMA = pa.schema([("index", pa.int32()), ("label", pa.uint8()),
                          ("pixels", pa.list_(pa.uint8(), PIXELS))])
CLASSES = 10  # labels 0..9, as idx.py validates them


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


def bad_shard(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}, not what prepare writes; rerun the prepare stage "
                     f"(dvc repro prepare)")


def type_text(t: pa.DataType) -> str:
    """uint8[784] for a fixed-size list (Parquet renames its item field), else Arrow's name."""
    return f"{t.value_type}[{t.list_size}]" if pa.types.is_fixed_size_list(t) else str(t)


def check_shard(path: Path, rows: int) -> None:
    """The shard at `path` has prepare's columns and types and `rows` rows, read from its
    Parquet footer alone (no pixel data)."""
    if not path.exists():
        raise DataError(f"{path} is missing, though manifest.json lists it; rerun the prepare "
                        f"stage (dvc repro prepare)")
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as e:
        raise bad_shard(path, f"not a readable Parquet file ({first_line(e)})") from None
    for want in SHARD_SCHEMA:
        if want.name not in schema.names:
            raise bad_shard(path, f"no column {want.name!r} (it has {', '.join(schema.names)})")
        got = schema.field(want.name).type
        if got != want.type:
            raise bad_shard(path, f"column {want.name!r} is {type_text(got)}, expected "
                                  f"{type_text(want.type)}")
    if meta.num_rows != rows:
        raise bad_shard(path, f"{meta.num_rows} rows where manifest.json says {rows}")


def split_entries(shard_dir: Path, split: str) -> List[dict]:
    """The manifest's entries {"file", "rows", "sha256"} of the shards of `split`."""
    splits = read_manifest(shard_dir).get("splits", {})
    if split not in splits:
        raise DataError(f"{Path(shard_dir) / 'manifest.json'} lists no {split!r} split; rerun "
                        f"the prepare stage (dvc repro prepare)")
    return splits[split]


def check_shards(shard_dir: Path, split: str) -> None:
    """Every shard of `split` against the manifest and prepare's schema, without reading
    pixels or checksums (cheap: before Ray starts)."""
    for e in split_entries(shard_dir, split):
        check_shard(Path(shard_dir) / e["file"], e["rows"])


def load_split(shard_dir: Path, split: str, with_labels: bool = False) -> Split:
    """Read every shard of `split` in order, verifying their checksums and prepare's
    contract (columns, types, rows, no missing values, labels 0..9)."""
    shard_dir = Path(shard_dir)
    columns = ["index", "pixels"] + (["label"] if with_labels else [])
    parts = []
    for e in split_entries(shard_dir, split):
        path = shard_dir / e["file"]
        if path.exists() and sha256_file(path) != e["sha256"]:
            raise DataError(f"{path}: checksum differs from manifest.json; re-run the prepare stage")
        check_shard(path, e["rows"])  # a shard with a matching manifest entry can still be bad
        part = pq.read_table(path, columns=columns)
        pixels = part.column("pixels")
        if pixels.null_count or any(c.values.null_count for c in pixels.chunks):
            raise bad_shard(path, "missing pixel values")
        if with_labels:
            labels = part.column("label")
            if labels.null_count or (len(labels) and labels.to_numpy().max() >= CLASSES):
                raise bad_shard(path, f"labels outside 0..{CLASSES - 1}")
        parts.append(part)
    table = pa.concat_tables(parts)
    pixels = table.column("pixels").combine_chunks().flatten().to_numpy().reshape(-1, PIXELS)
    return Split(index=table.column("index").to_numpy(), pixels=pixels,
                 labels=table.column("label").to_numpy() if with_labels else None)
