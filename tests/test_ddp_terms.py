"""The batch-level terms (balancing, marginal entropy, hmoe_vae's second-level balancing)
under real DDP: two gloo ranks on loopback, each with half the batch, get the
single-process loss and gradient."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.distributed import sum_over_ranks

from pipeline.models.kinds.hmoe_vae import sub_balancing_loss
from pipeline.models.manager import balancing_loss
from pipeline.models.manager import conditional_entropy, knn_radius, marginal_entropy


def terms(logits: torch.Tensor) -> torch.Tensor:
    """A manager loss with the global terms and a per-image one; the (B, 4) logits also
    read as K = 2 top logits and (B, 2, 2) sub-manager logits for the second level."""
    probs = F.softmax(logits, -1)
    second = sub_balancing_loss(F.softmax(logits[:, :2], -1), F.softmax(logits.view(-1, 2, 2), -1))
    return (0.1 * balancing_loss(probs) - 4 * marginal_entropy(probs) + conditional_entropy(logits)
            + 0.5 * second)


def _rank(rank: int, world: int, port: int, x, state, out: str, pixels=None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = nn.Linear(x.shape[1], 4)
        net.load_state_dict(state)
        ddp = nn.parallel.DistributedDataParallel(net)
        loss = terms(ddp(x.chunk(world)[rank]))
        loss.backward()  # DDP averages the gradients over ranks
        mine = torch.tensor([1.0, rank], dtype=torch.float64)
        total = sum_over_ranks(mine)  # the bookkeeping sum: a new tensor, the input untouched
        radius = knn_radius(pixels, 3, chunk=4) if pixels is not None else None  # rows split by rank
        torch.save({"loss": loss.detach(), "grad": net.weight.grad, "total": total, "mine": mine,
                    "radius": radius}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process_on_the_global_batch(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(12, 6)
    net = nn.Linear(6, 4)
    single = terms(net(x))
    single.backward()
    out = str(tmp_path / "rank")
    pixels = torch.randint(0, 256, (13, 784), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mp.spawn(_rank, args=(2, free_port(), x, net.state_dict(), out, pixels), nprocs=2)
    for r in range(2):
        got = torch.load(f"{out}.{r}", weights_only=True)
        # the knn radii: each rank made 7 or 6 of the 13 rows, every rank has all of them
        assert torch.allclose(got["radius"], knn_radius(pixels, 3, chunk=4), rtol=1e-5)  # GEMM blocks differ
        # each rank's loss has the global terms exactly and half the per-image mean
        assert torch.allclose(got["grad"], net.weight.grad, atol=1e-6)
        assert got["total"].tolist() == [2.0, 1.0] and got["mine"].tolist() == [1.0, r]
    losses = [torch.load(f"{out}.{r}", weights_only=True)["loss"] for r in range(2)]
    assert torch.allclose(sum(losses) / 2, single.detach(), atol=1e-6)
