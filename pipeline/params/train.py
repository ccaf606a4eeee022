"""The `train` section of params.yaml."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Union

from pipeline.core.errors import check, positive_int
from pipeline.core.schema import param
from pipeline.models.size import check_sizes

# Keys that say where and how robustly a run happens, not what it computes: the train
# stage does not depend on them (changing them reruns nothing), and a sweep cannot set them.
RUNTIME_KEYS = ("storage_path", "max_failures", "tensorboard")

# lr_scaling: the exponent p of lr x (global batch / batch_size)^p. Square-root scaling keeps
# Adam's update noise matched (Malladi et al. 2022, "On the SDEs and scaling rules for
# adaptive gradient algorithms"); linear scaling is SGD's (Goyal et al. 2017).
LR_SCALING = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}
LR_SCHEDULES = ("constant", "cosine")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = param(20, "passes over the training split")
    batch_size: int = param(100, "images a step: the global batch, split evenly over the workers "
                                 "(batch_scope: global), or each worker's (batch_scope: worker)")
    batch_scope: str = param("global", "global: batch_size is the global batch | worker: every "
                                       "worker steps on batch_size images, so the global batch "
                                       "is batch_size x num_workers (see docs/pipeline.md, DDP)")
    lr: float = param(1e-3, "Adam learning rate at a global batch of batch_size")
    lr_scaling: str = param("sqrt", "the lr of a larger global batch (batch_scope: worker): "
                                    "sqrt: lr x sqrt(num_workers), the rule for Adam | linear: lr x "
                                    "num_workers, the rule for SGD | none: lr as given")
    lr_schedule: str = param("constant", "constant: lr every epoch | cosine: lr x (1 + cos(pi e / "
                                         "epochs)) / 2 in epoch e (from 0), annealed towards 0 "
                                         "(Loshchilov & Hutter 2017); a sweep trial anneals over "
                                         "tune.epochs", added=True)
    seed: int = param(0, "seeds the weights, batch order and noise")
    num_workers: int = param(1, "Ray Train workers (DDP ranks); 1 is fastest on 2 cores")
    use_gpu: Union[bool, str] = param("auto", "true | false | auto (a GPU per worker when Ray has them)")
    storage_path: str = param(".ray_results", "Ray Train checkpoints: a local folder, a shared "
                                              "mount or a URI (s3://, gs://) on a cluster")
    max_failures: int = param(0, "worker-group restarts from the last checkpoint before the run fails "
                                 "(-1: forever)")
    tensorboard: bool = param(False, "also write TensorBoard logs: training to <storage_path>/"
                                      "tensorboard/<run>, a sweep's trials to their Tune folders "
                                      "(tensorboard --logdir <storage_path>)")
    restarts: int = param(1, "candidate initialisations; keeps the highest label-free I(x;k) "
                             "(kinds with clusters only)")
    restart_epochs: int = param(1, "epochs each candidate trains before the choice")
    threads: int = param(0, "intra-op CPU threads a worker (0: the CPUs Ray gives it); the "
                            "numbers depend on it, so the run record keeps it")
    deterministic: bool = param(False, "deterministic GPU kernels (torch.use_deterministic_algorithms, "
                                       "cuDNN, a fixed cuBLAS workspace): two GPU runs of the same "
                                       "params and seed give the same metrics; CPU runs already do")
    compile: Union[str, bool] = param("off", "torch.compile the training step: off (or false) | default "
                                "(or true: fused kernels) | "
                                "reduce-overhead (those, replayed as CUDA graphs on a GPU) | "
                                "max-autotune; see docs/benchmarks.md for what each measured")
    portable_cpu: bool = param(False, "pin the CPU kernels (MKL_CBWR=COMPATIBLE, ATen AVX2) so a "
                                      "run repeats bit for bit on any x86-64 CPU with AVX2 at the "
                                      "same train.threads; slower, see docs/pipeline.md")
    holdout: int = param(0, "N: the last N training images are held out of training and scored "
                            "after every epoch (held_out_nll in the epoch metrics, label-free); "
                            "0: train on every image", added=True)
    holdout_samples: int = param(1, "importance samples of held_out_nll: -log (1/S) sum_s w_s "
                                    "(1: the negative ELBO, as the published early stopping)",
                                 added=True)
    early_stopping: int = param(0, "patience P: stop once held_out_nll has not improved for P "
                                   "epochs, and keep the best epoch's weights (needs holdout); "
                                   "0: train every epoch, keep the last", added=True)

    # 100x the recipes' 100 (a batch larger than the training split is refused before Ray
    # starts anyway: driver.check_before_ray)
    SIZE_LIMITS: ClassVar[Dict[str, int]] = {"batch_size": 10_000, "holdout_samples": 100_000}

    def __post_init__(self):
        check(positive_int(self.epochs), "epochs", self.epochs, "use an integer >= 1")
        check(positive_int(self.num_workers), "num_workers", self.num_workers, "use an integer >= 1")
        check(self.batch_scope in ("global", "worker"), "batch_scope", self.batch_scope,
              "use global or worker")
        check(self.lr_scaling in LR_SCALING, "lr_scaling", self.lr_scaling,
              f"use one of {', '.join(LR_SCALING)}")
        check_sizes(self)
        check(self.batch_scope == "worker" or self.batch_size % self.num_workers == 0,
              "batch_size", self.batch_size,
              f"use a multiple of train.num_workers={self.num_workers} (it is the global batch), "
              f"or set train.batch_scope: worker")
        check(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "use a number > 0")
        check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule,
              f"use one of {', '.join(LR_SCHEDULES)}")
        check(self.use_gpu in (True, False, "auto"), "use_gpu", self.use_gpu, "use true, false or auto")
        check(self.max_failures >= -1, "max_failures", self.max_failures,
              "use -1 (retry forever), 0 or a positive integer")
        check(isinstance(self.threads, int) and not isinstance(self.threads, bool) and self.threads >= 0,
              "threads", self.threads, "use 0 (the CPUs Ray gives a worker) or an integer >= 1")
        check(isinstance(self.tensorboard, bool), "tensorboard", self.tensorboard, "use true or false")
        check(isinstance(self.deterministic, bool), "deterministic", self.deterministic,
              "use true or false")
        if isinstance(self.compile, bool):  # YAML reads off/no/false as False, on/yes/true as True
            object.__setattr__(self, "compile", "default" if self.compile else "off")
        check(self.compile in COMPILE_MODES, "compile", self.compile,
              f"use one of {', '.join(COMPILE_MODES)}")
        check(isinstance(self.portable_cpu, bool), "portable_cpu", self.portable_cpu, "use true or false")
        check(self.restarts >= 1, "restarts", self.restarts, "use an integer >= 1 (1 = no restarts)")
        check(self.holdout >= 0, "holdout", self.holdout, "use 0 (train on every image) or an integer >= 1")
        check(self.early_stopping >= 0, "early_stopping",
              self.early_stopping, "use 0 (off) or an integer >= 1")
        check(not self.early_stopping or self.holdout, "early_stopping", self.early_stopping,
              "it watches the held-out images; set train.holdout too (10000: the published split)")
        check(1 <= self.restart_epochs <= self.epochs, "restart_epochs", self.restart_epochs,
              f"use an integer from 1 to train.epochs={self.epochs}")

    @property
    def global_batch(self) -> int:
        """Images a step over all workers."""
        return self.batch_size * (self.num_workers if self.batch_scope == "worker" else 1)

    @property
    def worker_batch(self) -> int:
        """Images a step on each worker (DDP rank)."""
        return self.global_batch // self.num_workers

    @property
    def scaled_lr(self) -> float:
        """The Adam lr of the global batch: lr x (global_batch / batch_size)^p, p from
        lr_scaling (1 whenever batch_scope is global: the global batch is batch_size)."""
        return self.lr * (self.global_batch / self.batch_size) ** LR_SCALING[self.lr_scaling]

    def epoch_lr(self, epoch: int) -> float:
        """The Adam lr of epoch `epoch` (from 0) of a run: scaled_lr x lr_factor."""
        return self.scaled_lr * self.lr_factor(epoch)

    def lr_factor(self, epoch: int, epochs: Optional[int] = None) -> float:
        """lr_schedule's multiplier in epoch `epoch` (from 0) of `epochs` (default: these
        epochs; a sweep trial's is its budget): 1 when constant; under cosine
        (1 + cos(pi epoch / epochs)) / 2, 1 at epoch 0, 1/2 half way and
        (1 - cos(pi / epochs)) / 2 > 0 in the last epoch."""
        if self.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * epoch / (epochs or self.epochs)))
