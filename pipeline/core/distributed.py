"""DDP collectives the models and the training loop share (identity on one process)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.distributed as dist


def distributed() -> bool:
    """True inside a DDP group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_batch_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over dim 0 across every DDP rank's batch, differentiably.

    The all-reduce's backward is an all-reduce of the gradients, so after DDP averages
    gradients over R ranks, the result equals the gradient of the term computed on the
    global batch (R identical copies, each summed R ways, divided by R).
    """
    local = t.sum(0)
    return _AllReduceSum.apply(local) if distributed() else local


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks: what the deprecated
    torch.distributed.nn.functional.all_reduce did, without its warning on every rank."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """t summed over every DDP rank (t itself without DDP), for bookkeeping, not gradients.
    NCCL reduces CUDA tensors only, so under NCCL a CPU tensor travels via the GPU."""
    if not distributed():
        return t
    wire = t.cuda() if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(wire)
    return wire.to(t.device)


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on any DDP rank (one tiny all-reduce; identity without DDP)."""
    if not distributed():  # called every step: no tensor round trip on a single process
        return flag
    return bool(sum_over_ranks(torch.tensor([float(flag)])).item() > 0)


def first_message(message: str) -> str:
    """The first non-empty `message` over the ranks, on every rank ("" if none): how a
    failure seen by one rank (a corrupt shard) stops all of them before any collective
    that would otherwise wait for it forever."""
    if not distributed():
        return message
    every = [""] * dist.get_world_size()
    dist.all_gather_object(every, message)
    return next((m for m in every if m), "")


def mean_over_ranks(sums: Dict[str, float], count: int) -> Dict[str, float]:
    """{key: sum over ranks of sums[key] / sum over ranks of count}."""
    keys = sorted(sums)
    t = sum_over_ranks(torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)).tolist()
    return {k: v / t[-1] for k, v in zip(keys, t[:-1])}
