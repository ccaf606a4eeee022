"""The `data` section of params.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.core.errors import check, positive_int
from pipeline.core.schema import param
from pipeline.data.idx import DATASET_MD5


@dataclass(frozen=True)
class DataConfig:
    dataset: str = param("mnist", "mnist | fashion_mnist (same IDX format, 28x28, 10 classes)")
    raw_dir: str = param("data/raw", "where the four IDX .gz files live (downloaded if absent)")
    shards: int = param(4, "Parquet shards per split; training worker r reads shards[r::workers]")
    train_limit: Optional[int] = param(None, "null = all 60000 training images; N = the first N (quick runs)")

    def __post_init__(self):
        check(self.dataset in DATASET_MD5, "dataset", self.dataset, f"choose one of {sorted(DATASET_MD5)}")
        check(positive_int(self.shards), "shards", self.shards, "use an integer >= 1")
        check(self.train_limit is None or positive_int(self.train_limit), "train_limit",
              self.train_limit, "use null (all 60000 images) or an integer >= 1")
