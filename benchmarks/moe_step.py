"""Training-step speed of the batched MoE-VAE against the same model run expert by expert.

    python benchmarks/moe_step.py [--batch 100] [--experts 10] [--repeats 5] [--steps 20]
                                  [--device cpu|cuda]

Three variants, identical weights and noise (checked: equal loss), timed interleaved in
one run so the ratios are robust to machine load:
  loop        the seeds' layout: K nn.Linear VAEs in a Python loop, torch's default Adam
              (on CPU its per-tensor for-loop implementation, 8 tensors per expert)
  loop+fused  the same loop with the fused Adam the pipeline uses (isolates the optimizer)
  batched     pipeline.models.kinds.moe_vae (one GEMM / bmm per layer for all K experts) with
              pipeline.training.loop.make_optimizer, exactly the train stage's step
  top-k       the same model with sparse routing (model.moe_vae.top_k = k, --top-k 1 2): each
              expert runs on its own images only; a different loss, so not loss-checked,
              and its GFLOP/s counts the useful work (k experts per image, no padding)
Also prints achieved GFLOP/s beside a matrix-multiply peak measured in the same run, on the
same device (--device cuda: an fp32 peak, TF32 left off as in training; every timing waits
for the GPU to finish), and two floors under the batched step that bound any batched/loop
speed-up on this machine (see `floors`): its matmuls' FLOPs at that peak plus its Adam
update, and the time torch's own GEMM kernels take at the step's shapes plus that update.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode


from pipeline.models.registry import ModelConfig, model_config  # noqa: E402
from pipeline.models.distributions import kl_std_normal  # noqa: E402
from pipeline.models.manager import balancing_loss  # noqa: E402
from pipeline.models.kinds.moe_vae import MoEVAE  # noqa: E402
from pipeline.training.loop import make_optimizer  # noqa: E402


class LoopMoEVAE(nn.Module):
    """The reference: K separate nn.Linear VAEs, visited in a Python loop."""

    def __init__(self, batched: MoEVAE):
        super().__init__()
        self.cfg, self.likelihood, self.manager = batched.cfg, batched.likelihood, batched.manager
        self.experts = nn.ModuleList()
        for k in range(batched.spec.experts):
            layers = []
            for layer in list(batched.encoders.layers) + list(batched.decoders.layers):
                lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[2])
                with torch.no_grad():
                    lin.weight.copy_(layer.weight[k].t())
                    lin.bias.copy_(layer.bias[k, 0])
                layers.append(lin)
            self.experts.append(nn.ModuleList(layers))

    def forward(self, x):
        probs = F.softmax(self.manager(x)[0], -1)
        eps = torch.randn(self.cfg.moe_vae.experts, x.shape[0], self.cfg.net.latent_dim,
                          device=x.device)  # same draw as batched
        losses = []
        for k, (e1, e2, d1, d2) in enumerate(self.experts):
            mu, logvar = e2(torch.sigmoid(e1(x))).chunk(2, -1)
            z = mu + torch.exp(0.5 * logvar) * eps[k]
            log_px = self.likelihood.log_prob(x, d2(torch.sigmoid(d1(z))))
            losses.append(kl_std_normal(mu, logvar) - log_px)
        expected = (probs * torch.stack(losses, 1)).sum(1).mean()
        return {"loss": expected + self.cfg.moe_vae.balancing_weight * balancing_loss(probs)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(model, opt, x, steps: int) -> float:
    sync(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(x)["loss"].backward()
        opt.step()
    sync(x.device)
    return (time.perf_counter() - t0) / steps


def matmul_peak_gflops(device: torch.device, reps: int = 20) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


GEMMS = (torch.ops.aten.mm, torch.ops.aten.bmm, torch.ops.aten.baddbmm, torch.ops.aten.addmm)


class OpTimer(TorchDispatchMode):
    """Seconds spent inside the GEMMs and inside the fused Adam update, forward and backward
    alike (every aten op passes through the mode; only these are timed)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.gemm, self.adam = device, 0.0, 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = ("gemm" if func.overloadpacket in GEMMS else
                "adam" if func.overloadpacket is torch.ops.aten._fused_adam_ else None)
        if kind is None:
            return func(*args, **(kwargs or {}))
        sync(self.device)
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        sync(self.device)
        setattr(self, kind, getattr(self, kind) + time.perf_counter() - t0)
        return out


def floors(model, opt, x, steps: int, flops: float, peak_gflops: float):
    """Two lower bounds on one batched step, seconds: (matmul FLOPs at the peak + Adam,
    the step's own GEMM calls + Adam), both timed inside real steps of `model`."""
    timer = OpTimer(x.device)
    with timer:
        step_seconds(model, opt, x, steps)
    adam = timer.adam / steps
    return flops / (peak_gflops * 1e9) + adam, timer.gemm / steps + adam, adam


def step_flops(cfg: ModelConfig, batch: int, d: int = 784) -> float:
    """Multiply-adds of the dense layers x2 (FLOPs) x3 (forward + two backward matmuls);
    with top_k only k experts per image count."""
    k, h, l = cfg.moe_vae.experts, cfg.net.hidden, cfg.net.latent_dim
    macs = d * h + h * k + (cfg.moe_vae.top_k or k) * (d * h + h * 2 * l + l * h + h * d)
    return 6.0 * macs * batch


def matmul_flops(cfg: ModelConfig, batch: int, d: int = 784) -> float:
    """The FLOPs of the matmuls autograd really runs in a dense step: step_flops less the
    input gradient of the first layers (manager and K experts), which images do not need."""
    return step_flops(cfg, batch, d) - 2.0 * d * cfg.net.hidden * (1 + cfg.moe_vae.experts) * batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--experts", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--top-k", type=int, nargs="*", default=[1, 2],
                   help="also time sparse routing with these k (none: skip)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no GPU here; use --device cpu")
    device = torch.device(args.device)

    torch.manual_seed(0)
    cfg = model_config({"moe_vae.experts": args.experts})
    batched = MoEVAE(cfg)
    loop = LoopMoEVAE(batched).to(device)
    batched.to(device)
    x = torch.rand(args.batch, 784, device=device)
    torch.manual_seed(1)
    a = batched(x)["loss"].item()
    torch.manual_seed(1)
    b = loop(x)["loss"].item()
    assert abs(a - b) < 1e-3 * abs(a), f"variants disagree: {a} vs {b}"

    variants = {"loop": (loop, torch.optim.Adam(loop.parameters(), lr=1e-3)),
                "loop+fused": (loop, make_optimizer(loop, 1e-3)),
                "batched": (batched, make_optimizer(batched, 1e-3))}
    configs = {name: cfg for name in variants}
    for k in args.top_k:
        configs[f"top-{k}"] = model_config({"moe_vae.experts": args.experts, "moe_vae.top_k": k})
        routed = MoEVAE(configs[f"top-{k}"]).to(device)
        routed.load_state_dict(batched.state_dict())
        variants[f"top-{k}"] = (routed, make_optimizer(routed, 1e-3))
    times = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved: every variant sees the same machine state
        for name, (model, opt) in variants.items():
            times[name].append(step_seconds(model, opt, x, args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    flops = step_flops(cfg, args.batch)
    peak = matmul_peak_gflops(device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, threads {torch.get_num_threads()}")
    print(f"{where}, batch {args.batch}, K={args.experts}, "
          f"hidden {cfg.net.hidden}, latent {cfg.net.latent_dim}; loss check {a:.3f} == {b:.3f}")
    for k, t in med.items():
        print(f"{k:10s} {t * 1e3:7.2f} ms/step  {args.batch / t:8.0f} img/s  "
              f"{step_flops(configs[k], args.batch) / t / 1e9:6.1f} GFLOP/s  "
              f"{med['loop'] / t:5.2f}x loop")
    print(f"speed-up batched/loop: {med['loop'] / med['batched']:.2f}x, batched/loop+fused: "
          f"{med['loop+fused'] / med['batched']:.2f}x   (model {flops / args.batch / 1e6:.1f} "
          f"MFLOP/sample/step; matmul peak {peak:.0f} GFLOP/s, "
          f"batched reaches {flops / med['batched'] / 1e9 / peak:.1%} of it)")
    exact = matmul_flops(cfg, args.batch)
    arith, gemm, adam = floors(*variants["batched"], x, args.steps, exact, peak)
    print(f"floors under a batched step: {arith * 1e3:.2f} ms = its {exact / args.batch / 1e6:.1f} "
          f"MFLOP/sample of matmuls at the peak + Adam {adam * 1e3:.2f} ms "
          f"(loop/floor {med['loop'] / arith:.2f}x); {gemm * 1e3:.2f} ms = torch's GEMMs at "
          f"the step's shapes + Adam (loop/floor {med['loop'] / gemm:.2f}x), the most this "
          f"step's GEMM calls allow")


if __name__ == "__main__":
    main()
