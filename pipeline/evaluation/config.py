"""The `evaluate` section of params.yaml."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Union

from pipeline.core.errors import check, positive_int
from pipeline.core.schema import param
from pipeline.models.size import check_sizes


@dataclass(frozen=True)
class EvaluateConfig:
    iw_samples: int = param(5000, "importance samples per test image for log p(x)")
    iw_chunk: int = param(500, "samples decoded at once (memory against speed)")
    batch_size: int = param(100, "test images per batch")
    seed: int = param(0, "seeds the test-set binarization and the Monte Carlo estimates")
    ll_limit: Optional[int] = param(None, "null = the whole test set; N = log p(x) of the first N "
                                          "test images only (clustering always uses all)")
    workers: int = param(1, "1: log p(x) in this process; N: split over N Ray tasks (attached to "
                            "$RAY_ADDRESS's cluster, else a local Ray); 0: one task per GPU of the "
                            "cluster. The estimates do not depend on it")
    use_gpu: Union[bool, str] = param("auto", "true | false | auto (a GPU when this process, or the "
                                              "Ray cluster for workers != 1, has one)")

    # 20x the recipes' 5000 samples decoded 500 at a time; batch_size: the whole test split
    # (100x the recipes'). A (batch_size, iw_chunk) chunk of decodes is what evaluate holds
    SIZE_LIMITS: ClassVar[Dict[str, int]] = {"iw_samples": 100_000, "iw_chunk": 10_000,
                                             "batch_size": 10_000}

    def __post_init__(self):
        check_sizes(self)
        check(self.ll_limit is None or positive_int(self.ll_limit), "ll_limit", self.ll_limit,
              "use null (whole test set) or an integer >= 1")
        check(isinstance(self.workers, int) and not isinstance(self.workers, bool) and self.workers >= 0,
              "workers", self.workers, "use 1 (this process), N >= 2 Ray tasks, or 0 (one per GPU)")
        check(self.use_gpu in (True, False, "auto"), "use_gpu", self.use_gpu, "use true, false or auto")
