"""DDP at a fixed global batch: two gloo ranks running the train stage's own epoch
(loop.train_epoch, fused Adam) with 20 images each end with the weights one process
reaches with 40, for every kind whose loss is a per-image mean plus batch terms that
DDP all-reduces (the balancing and IMSAT marginal-entropy terms), also where a fixed
manager leaves parameters unused (manager_epochs); and the lr rule of
train.batch_scope: worker."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from pipeline.models.registry import build_model
from pipeline.params import params_from_dict
from pipeline.training.loop import make_optimizer, train_epoch
from tests.test_ddp_terms import free_port

MODELS = {
    "vae": {"kind": "vae"},
    "gmm_vae": {"kind": "gmm_vae", "gmm_vae": {"components": 3}},
    "moe_vae": {"kind": "moe_vae", "moe_vae": {"experts": 3, "balancing_weight": 1.0, "manager": {
        "encoder": "mlp", "entropy_weight": 1, "marginal_entropy_weight": 4}}},
    # top-1 routing, and from epoch 2 a fixed manager whose parameters get no gradient
    "moe_vae_fixed": {"kind": "moe_vae", "moe_vae": {"experts": 3, "top_k": 1, "manager_epochs": 1,
                                                     "manager": {"encoder": "mlp", "entropy_weight": 1}}},
}
GLOBAL, STEPS, EPOCHS = 40, 5, 2


def _model(kind: str) -> nn.Module:
    spec = MODELS[kind]
    torch.manual_seed(0)
    return build_model(params_from_dict({"model": {**spec, "net": {"latent_dim": 4, "hidden": 16}}}).model)


def _train(kind: str, pixels: torch.Tensor, rank: int, world: int):
    """Weights and per-epoch loss parts after EPOCHS epochs of train_epoch at GLOBAL images a step."""
    raw = _model(kind)
    ddp = nn.parallel.DistributedDataParallel
    model = ddp(raw, find_unused_parameters=raw.skips_parameters) if world > 1 else raw  # as worker.py
    opt = make_optimizer(raw, 3e-3)
    # Reparameterisation noise is each rank's own draw (it must be: independent samples);
    # zeroed here on both sides, what is compared is the rest: the same images and
    # binarization on every rank, averaged gradients and the all-reduced batch terms.
    torch.randn_like = lambda t, **kw: torch.zeros_like(t, **kw)
    parts = [train_epoch(model, raw, opt, pixels, GLOBAL // world, STEPS, e, 7, rank, world=world)
             for e in range(EPOCHS)]
    return {k: v.detach().clone() for k, v in raw.state_dict().items()}, parts


def _rank(rank: int, port: int, pixels, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save({kind: _train(kind, pixels, rank, 2) for kind in MODELS}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _single(pixels, out: str) -> None:
    torch.set_num_threads(1)
    torch.save({kind: _train(kind, pixels, 0, 1) for kind in MODELS}, out)


def test_two_workers_reach_the_weights_of_one_at_the_same_global_batch(tmp_path):
    pixels = torch.randint(0, 256, (GLOBAL * STEPS + 7, 784), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    out = str(tmp_path / "rank")
    mp.spawn(_rank, args=(free_port(), pixels, out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    # one process, in a child too: the same noise patch and thread count
    single = mp.get_context("spawn").Process(target=_single, args=(pixels, str(tmp_path / "one")))
    single.start()
    single.join()
    one = torch.load(str(tmp_path / "one"), weights_only=True)
    for kind in MODELS:
        weights, parts = one[kind]
        for w_ddp, p_ddp in (r[kind] for r in ranks):
            assert w_ddp.keys() == weights.keys()
            for name, w in weights.items():
                assert torch.allclose(w_ddp[name], w, rtol=1e-4, atol=1e-5), (kind, name)
            for e in range(EPOCHS):
                assert p_ddp[e].keys() == parts[e].keys()
                for k, v in parts[e].items():
                    assert p_ddp[e][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (kind, e, k)
        assert any(not torch.equal(weights[n], _model(kind).state_dict()[n]) for n in weights)


@pytest.mark.parametrize("scope, scaling, workers, batch, lr", [
    ("global", "sqrt", 4, 100, 1e-3),     # the global batch is batch_size: lr as given
    ("worker", "sqrt", 4, 400, 2e-3),     # 4 x 100 images: lr x sqrt(4)
    ("worker", "linear", 4, 400, 4e-3),
    ("worker", "none", 4, 400, 1e-3),
    ("worker", "sqrt", 1, 100, 1e-3),
])
def test_the_global_batch_and_its_lr_follow_batch_scope_and_lr_scaling(scope, scaling, workers, batch, lr):
    t = params_from_dict({"train": {"batch_size": 100, "lr": 1e-3, "num_workers": workers,
                                    "batch_scope": scope, "lr_scaling": scaling}}).train
    assert (t.global_batch, t.worker_batch) == (batch, batch // workers)
    assert t.scaled_lr == pytest.approx(lr)
