"""Expert-step speed of routed experts with shared hidden layers: the shared bodies on the
real rows only (the code) against every layer on the padded (K, C) blocks (before).

    python benchmarks/shared_routing.py [--preset moe_imsat_ll_shared] [--repeats 5] [--steps 10]

With top-1 routing the A = B (image, expert) pairs are packed into K blocks of C rows, C =
the busiest expert's count, so a layer run on the blocks computes K*C >= B rows. Experts
with model.net.shared_hidden own only their encoder's output layer and their decoder's
input layer; the code runs the shared layers on the B (or A) real rows. Both variants take
the preset's expert-only step (manager fixed, batch train.batch_size x expert_batch_scale,
Adam) with the same weights and the same routings, drawn uniformly over the experts as a
trained manager spreads the digits; timed interleaved in one run, so the ratio is robust to
machine load. Prints the padding factor K*C/A beside the speed-up.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.experiments.presets import load_preset
from pipeline.experiments.runs import run_params
from pipeline.models.kinds.moe_vae import MoEVAE
from pipeline.models.registry import build_model
from pipeline.models.routing import on_blocks, pack
from pipeline.params import Params
from pipeline.training.loop import make_optimizer


class OnBlocks(MoEVAE):
    """The previous layout: every layer, shared or not, on the padded (K, C) blocks."""

    def expert_losses(self, x, packing=None):
        if packing is None:
            return super().expert_losses(x)
        return on_blocks(self, x, packing)


def step_seconds(model, opt, x, packings) -> float:
    t0 = time.perf_counter()
    for packing in packings:
        opt.zero_grad(set_to_none=True)
        loss, _ = model.expert_losses(x, packing)  # (A,)
        loss.mean().backward()
        opt.step()
    return (time.perf_counter() - t0) / len(packings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="moe_imsat_ll_shared")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()

    params = run_params(Params(), load_preset(args.preset), 0)
    cfg, spec = params.model, params.model.moe_vae
    if not (cfg.net.shared_hidden and spec.top_k):
        p.error(f"--preset {args.preset}: set model.net.shared_hidden and model.moe_vae.top_k")
    torch.manual_seed(0)
    code = build_model(cfg)
    before = OnBlocks(cfg)
    before.load_state_dict(code.state_dict())
    batch = params.train.batch_size * spec.expert_batch_scale  # the expert-only phase
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, code.n_pixels, generator=gen).bernoulli(generator=gen)
    packings = [pack(torch.rand(batch, spec.experts, generator=gen).topk(spec.top_k, -1).indices,
                     spec.experts) for _ in range(args.steps)]
    variants = {"before (blocks)": (before, make_optimizer(before, 1e-3)),
                "code (rows)": (code, make_optimizer(code, 1e-3))}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved: both see the same machine state
        for name, (model, opt) in variants.items():
            times[name].append(step_seconds(model, opt, x, packings))
    med = {name: statistics.median(t) for name, t in times.items()}
    padding = statistics.mean(q.experts * q.cap / len(q.expert) for q in packings)
    print(f"{args.preset}: K={spec.experts}, top-{spec.top_k}, batch {batch}, hidden "
          f"{cfg.net.layers}x{cfg.net.hidden}{' gated' if cfg.net.gated else ''}, latent "
          f"{cfg.net.latent_dim}; CPU threads {torch.get_num_threads()}; padding K*C/A {padding:.2f}")
    for name, t in med.items():
        print(f"{name:16s} {t * 1e3:7.2f} ms/step  {batch / t:8.0f} img/s")
    print(f"speed-up rows/blocks: {med['before (blocks)'] / med['code (rows)']:.2f}x")


if __name__ == "__main__":
    main()
