"""Validated IDX arrays -> Parquet shards with a manifest: the prepare stage's code
(load.py reads them back; prepare does not depend on it).

Shard schema: index (int32, row in the original split), label (uint8), pixels
(fixed_size_list<uint8>[784], row-major 28x28). Training reads `index` and `pixels` only.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import DataError
from pipeline.core.io import atomic_path
from pipeline.data.idx import MD5, PIXELS, SPLITS, load_raw_split


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shards(out_dir: Path, raw_dir: Path, shards: int, train_limit: Optional[int],
                 counts: dict = SPLITS, md5: Optional[dict] = MD5) -> dict:
    """Validate the raw files and write `shards` Parquet files per split plus manifest.json.

    The whole directory appears atomically; identical input gives byte-identical files.
    """
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        manifest = {"source_md5": md5, "train_limit": train_limit,
                    "pixels": PIXELS, "splits": {}}
        for split in SPLITS:
            images, labels = load_raw_split(raw_dir, split, counts[split], md5)
            if split == "train" and train_limit is not None:
                images, labels = images[:train_limit], labels[:train_limit]
            if shards > len(images):
                raise DataError(f"data.shards={shards} exceeds the {len(images)} {split} rows; "
                                f"lower data.shards")
            entries = []
            for i, rows in enumerate(np.array_split(np.arange(len(images)), shards)):
                name = f"{split}-{i:03d}-of-{shards:03d}.parquet"
                table = pa.table({
                    "index": pa.array(rows.astype(np.int32)),
                    "label": pa.array(labels[rows]),
                    "pixels": pa.FixedSizeListArray.from_arrays(pa.array(images[rows].ravel()), PIXELS),
                })
                pq.write_table(table, tmp / name, compression="zstd", row_group_size=10_000)
                entries.append({"file": name, "rows": len(rows), "sha256": sha256_file(tmp / name)})
            manifest["splits"][split] = entries
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
