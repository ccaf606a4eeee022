"""The neighbours stage's output: each training image's distances to its k nearest other
training images (pixels only, label-free), computed once per shard set and read by every
run and sweep trial whose model needs them (IMSAT's per-image VAT radius).

    data/neighbours/distances.npy   (N, k) float32, ascending per row, rows in shard order
    data/neighbours/meta.json       {"k", "rows", "train_sha256": the shards' checksums}

Computing them costs one N x N x 784 GEMM (about 40 s for MNIST on 2 cores); a run that
reads them instead starts training that much sooner.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from pipeline.core.distributed import distributed, sum_over_ranks
from pipeline.core.errors import DataError, check, positive_int
from pipeline.core.io import atomic_path
from pipeline.core.schema import param
from pipeline.data.load import load_split, read_manifest

DISTANCES, META = "distances.npy", "meta.json"


@dataclass(frozen=True)
class NeighboursConfig:
    """The `neighbours` section of params.yaml."""
    k: int = param(10, "distances to the 1st..k-th nearest training image kept per image "
                       "(label-free); a manager's consistency_knn up to k reads them")

    def __post_init__(self):
        check(positive_int(self.k) and self.k <= 100, "k", self.k, "use an integer from 1 to 100")


@torch.no_grad()
def knn_distances(pixels: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """(N, k) each row's Euclidean distances to its 1st..k-th nearest other row of the
    (N, D) uint8 grey `pixels` (scaled to [0, 1]), ascending. Exact, as chunks of rows
    against all N: one GEMM of N x N x D (MNIST on 2 CPU cores: about 40 s). Under DDP
    each of R ranks does N/R of the rows; one all-reduce shares them. Label-free: the
    neighbours stage caches it (data/neighbours), so a run or a trial reads it instead."""
    x = pixels.float().div(255)
    sq = (x * x).sum(1)  # (N,)
    n = len(x)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed() else (0, 1)
    per = -(-n // world)
    out = torch.zeros(n, k, device=x.device)  # other ranks' rows stay 0 until the sum
    for i in range(rank * per, min(n, (rank + 1) * per), chunk):
        q = x[i:min(i + chunk, (rank + 1) * per)]
        d2 = sq[i:i + len(q), None] - 2 * q @ x.t() + sq[None]  # (c, N) squared distances
        d2[torch.arange(len(q)), torch.arange(i, i + len(q))] = float("inf")  # not itself
        out[i:i + len(q)] = d2.topk(k, dim=1, largest=False).values.clamp_min(0).sqrt()
    return sum_over_ranks(out)  # every rank's rows, exactly (the others add zeros)


def shards_fingerprint(shard_dir: Path) -> str:
    """One checksum of the training shards (from their manifest entries)."""
    entries = read_manifest(shard_dir)["splits"]["train"]
    return hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()


def write_neighbours(shard_dir: Path, out: Path, k: int) -> dict:
    """Compute the training split's (N, k) neighbour distances into the folder `out`,
    written whole or not at all; returns its meta."""
    pixels = torch.from_numpy(load_split(shard_dir, "train").pixels.copy())
    distances = knn_distances(pixels, k).numpy().astype(np.float32)
    meta = {"k": k, "rows": int(len(distances)), "train_sha256": shards_fingerprint(shard_dir)}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        np.save(tmp / DISTANCES, distances)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_neighbours(path: Optional[Path], shard_dir: Path) -> Optional[torch.Tensor]:
    """The cached (N, k) distances of the shards in `shard_dir`, or None without a path.
    A cache made from other shards is an error, not a silent recompute."""
    if path is None:
        return None
    path = Path(path)
    if not (path / META).exists() or not (path / DISTANCES).exists():
        raise DataError(f"{path} holds no neighbour distances; run `dvc repro neighbours`")
    meta = json.loads((path / META).read_text())
    if meta.get("train_sha256") != shards_fingerprint(shard_dir):
        raise DataError(f"{path} was computed from other shards than {shard_dir}; "
                        f"run `dvc repro neighbours`")
    distances = np.load(path / DISTANCES)
    if distances.shape != (meta["rows"], meta["k"]):
        raise DataError(f"{path / DISTANCES} has shape {distances.shape}, not "
                        f"({meta['rows']}, {meta['k']}) as meta.json says; run `dvc repro neighbours`")
    return torch.from_numpy(distances)
