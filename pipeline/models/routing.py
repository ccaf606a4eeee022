"""Sparse top-k routing for the MoE-VAE (`model.moe_vae.top_k`), as in the sparsely-gated MoE
(Shazeer et al., ICLR 2017) that the seeds cite for the balancing term.

    S(x)     = the k experts with the largest p(j|x)
    g_j(x)   = p(j|x) / sum_{i in S(x)} p(i|x)            gates, renormalised over S(x)
    expected = mean_b sum_{j in S(x_b)} g_j(x_b) L_j(x_b)  replaces the dense sum over all K

Each expert runs only on the images routed to it. The B*k (image, expert) pairs are
packed by expert into a (K, C, D) tensor, C = the busiest expert's share of this batch, so
one batched matmul per layer still serves all experts, on K*C ~ k*B rows instead of K*B.
Padding rows are computed and dropped. With k = 1 every gate is 1: the expert loss sends
no gradient to the manager, which then learns only from the balancing and IMSAT terms
(model.moe_vae.manager.*_weight); k >= 2 keeps a gradient between the chosen experts.
The balancing term, the manager terms, clustering and log p(x) still use the full p(k|x).
"""
from __future__ import annotations

from typing import Tuple

import torch


def pack(experts: torch.Tensor, n_experts: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(B, k) expert ids -> (expert (A,), row (A,), C) with A = B*k: pair a = b*k + j
    (image b, its j-th choice) sits in row `row[a]` of expert `expert[a]`'s block of
    C = max_e |{a : expert[a] = e}| rows."""
    flat = experts.reshape(-1)  # (A,)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)  # (K,)
    starts = torch.cumsum(counts, 0) - counts
    row = torch.empty_like(flat)
    row[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    return flat, row, int(counts.max())


def routed_expert_loss(model, x: torch.Tensor, logits: torch.Tensor, k: int):
    """The gated expert loss and gated KL (scalars) of `model` (a MoEVAE) on x (B, D)
    with manager logits (B, K), running each expert on its own images only."""
    (b, d), n_experts = x.shape, logits.shape[1]
    top_logits, top_e = logits.topk(k, dim=-1)  # (B, k)
    gates = torch.softmax(top_logits, -1)  # = p renormalised over S; exactly 1 (no grad) at k=1
    expert, row, cap = pack(top_e, n_experts)
    xs = x.new_zeros(n_experts, cap, d)  # (K, C, D), zero padding
    xs[expert, row] = x.repeat_interleave(k, dim=0)  # pair a = b*k + j holds image b
    loss_kc, kl_kc = model.expert_losses(xs)  # (K, C) each
    loss = loss_kc[expert, row].view(b, k)  # back to (B, k), padding dropped
    kl = kl_kc[expert, row].view(b, k)
    return (gates * loss).sum(1).mean(), (gates * kl).sum(1).mean()
