"""log p(x) of the test images by importance sampling: in this process (on a GPU when
there is one), or fanned out over Ray tasks, one GPU each when the cluster has GPUs.

Every batch of images draws its samples from its own seed, (evaluate.seed, batch index),
so an image's estimate does not depend on how the batches are spread over workers: the
fanned-out result is the single-process one, up to the floating-point order of each
worker's arithmetic. The workers' estimates are put back together in batch order."""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Callable, List

import torch

from pipeline.core.errors import ConfigError, TrainError
from pipeline.core.failures import describe
from pipeline.evaluation.config import EvaluateConfig
from pipeline.models.base import GenerativeModel


def batch_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919) % (2 ** 63)


@torch.no_grad()
def iw_log_likelihood(model: GenerativeModel, x: torch.Tensor, n_samples: int,
                      chunk: int) -> torch.Tensor:
    """(B,) estimates of log p(x) = log (1/S) sum_s w_s, with S = n_samples importance
    weights drawn `chunk` at a time and combined by a running logsumexp."""
    total = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    done = 0
    while done < n_samples:
        s = min(chunk, n_samples - done)
        log_w = model.log_importance_weights(x, s).double()  # (B, s)
        total = torch.logaddexp(total, torch.logsumexp(log_w, dim=1))
        done += s
    return total - math.log(n_samples)


@torch.no_grad()
def batches_log_likelihood(model: GenerativeModel, x: torch.Tensor, first: int, cfg: EvaluateConfig,
                           progress: Callable[[torch.Tensor], None] = lambda ll: None) -> torch.Tensor:
    """(N,) estimates for x, cut in batches of cfg.batch_size numbered from `first`;
    progress(estimates) after each batch."""
    out = []
    for i, xb in enumerate(x.split(cfg.batch_size)):
        torch.manual_seed(batch_seed(cfg.seed, first + i))
        out.append(iw_log_likelihood(model, xb, cfg.iw_samples, cfg.iw_chunk).cpu())
        progress(out[-1])
    return torch.cat(out)


def _on_device(model: GenerativeModel, device: torch.device) -> GenerativeModel:
    return model if device.type == "cpu" else copy.deepcopy(model).to(device)


def _worker(state: dict, x: torch.Tensor, first: int, cfg: EvaluateConfig, gpu: bool, threads: int):
    """A Ray task: rebuild the model, estimate its share of the batches."""
    from pipeline.models.checkpoint import model_from_state

    torch.set_num_threads(threads)
    device = torch.device("cuda" if gpu else "cpu")
    model = model_from_state(state).to(device).eval()
    return batches_log_likelihood(model, x.to(device), first, cfg)


def log_likelihoods(model: GenerativeModel, x: torch.Tensor, cfg: EvaluateConfig,
                    log: Callable[[str], None] = print) -> torch.Tensor:
    """(N,) estimates of log p(x), on the plan cfg.workers and cfg.use_gpu say."""
    t0, n, seen, total = time.perf_counter(), len(x), [0], [0.0]
    every = max(1, n // 10)

    def progress(ll: torch.Tensor) -> None:  # about ten lines, with the running mean
        k = len(ll)
        seen[0] += k
        total[0] += float(ll.sum())
        if seen[0] // every > (seen[0] - k) // every or seen[0] == n:
            spent = time.perf_counter() - t0
            log(f"log-likelihood: {seen[0]}/{n} images, mean {total[0] / seen[0]:.2f} nats, "
                f"{spent:.0f}s, ETA {spent / seen[0] * (n - seen[0]):.0f}s")

    if cfg.workers == 1:
        gpu = cfg.use_gpu is True or (cfg.use_gpu == "auto" and torch.cuda.is_available())
        if cfg.use_gpu is True and not torch.cuda.is_available():
            raise ConfigError("evaluate.use_gpu=true but torch sees no GPU here; use auto or false")
        device = torch.device("cuda" if gpu else "cpu")
        return batches_log_likelihood(_on_device(model, device), x.to(device), 0, cfg, progress)
    return _fan_out(model, x, cfg, log, progress)


def task_failure(e: BaseException) -> str:
    """One line for a failed Ray task: the cause it raised (its traceback stays in the
    task's Ray log), or Ray's memory monitor stopping it."""
    import ray.exceptions

    if isinstance(e, ray.exceptions.OutOfMemoryError):
        return "it ran out of memory and Ray stopped it; lower evaluate.iw_chunk or evaluate.batch_size"
    return describe(getattr(e, "cause", None) or e)[0]


def _fan_out(model: GenerativeModel, x: torch.Tensor, cfg: EvaluateConfig, log, progress) -> torch.Tensor:
    from pipeline.core.ray_env import init_ray

    log(init_ray())
    import ray

    from pipeline.models.checkpoint import model_state

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 1)
    gpu = cfg.use_gpu is True or (cfg.use_gpu == "auto" and gpus > 0)
    if gpu and gpus == 0:
        raise ConfigError("evaluate.use_gpu=true but the Ray cluster has no GPU; use auto or false")
    workers = cfg.workers or gpus
    if workers == 0:
        raise ConfigError("evaluate.workers=0 means one per GPU, and the Ray cluster has none; "
                          "set a number of workers")
    local = not os.environ.get("RAY_ADDRESS")
    per_task_cpus = max(1.0, cpus / workers) if local and not gpu else 1.0
    batches = list(range(0, len(x), cfg.batch_size))  # batch starts
    parts: List[range] = [range(i * len(batches) // workers, (i + 1) * len(batches) // workers)
                          for i in range(workers)]
    state = ray.put(model_state(model))
    task = ray.remote(_worker).options(num_cpus=per_task_cpus, num_gpus=1 if gpu else 0)
    log(f"log-likelihood: {len(x)} images in {len(batches)} batches over {workers} Ray task(s) "
        f"({'a GPU' if gpu else f'{per_task_cpus:g} CPU'} each)")
    refs = []
    for part in parts:
        if len(part):
            lo = batches[part.start]
            hi = batches[part.stop] if part.stop < len(batches) else len(x)
            refs.append(task.remote(state, x[lo:hi].cpu(), part.start, cfg, gpu, max(1, int(per_task_cpus))))
    pending, got = list(refs), {}
    while pending:  # a line as each task ends; each result fetched once
        done, pending = ray.wait(pending, num_returns=1)
        try:
            got[done[0]] = ray.get(done[0])
        except (ray.exceptions.RayTaskError, ray.exceptions.OutOfMemoryError) as e:
            raise TrainError(f"log-likelihood: a Ray task failed: {task_failure(e)}") from None
        progress(got[done[0]])
    return torch.cat([got[r] for r in refs])
