"""Sparse top-k routing for the MoE-VAE (`model.moe_vae.top_k`), as in the sparsely-gated MoE
(Shazeer et al., ICLR 2017) that the seeds cite for the balancing term.

    S(x)     = the k experts with the largest p(j|x)
    g_j(x)   = p(j|x) / sum_{i in S(x)} p(i|x)            gates, renormalised over S(x)
    expected = mean_b sum_{j in S(x_b)} g_j(x_b) L_j(x_b)  replaces the dense sum over all K

Each expert runs only on the images routed to it. The A = B*k (image, expert) pairs are
packed by expert into (K, C, ...) blocks, C = the busiest expert's share of this batch, so
one batched matmul per layer still serves all experts, on K*C ~ k*B rows instead of K*B.
Padding rows are computed and dropped (`on_blocks`). With model.net.shared_hidden only the
experts' own layers run on the blocks; the shared layers run on the real rows (B images, A
pairs). With k = 1 every gate is 1: the expert loss sends no gradient to the manager, which
then learns only from the balancing and IMSAT terms (model.moe_vae.manager.*_weight);
k >= 2 keeps a gradient between the chosen experts.
The balancing term, the manager terms, clustering and log p(x) still use the full p(k|x).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """Where a batch's A = B*k (image, expert) pairs sit in per-expert blocks (K, C, ...):
    pair a = b*k + j (image b, its j-th choice) in row `row[a]` of expert `expert[a]`'s
    block, C = `cap` = the busiest expert's count."""
    expert: torch.Tensor  # (A,)
    row: torch.Tensor  # (A,)
    k: int
    experts: int  # K
    cap: int  # C

    def pairs(self, t: torch.Tensor) -> torch.Tensor:
        """(B, ...) per image -> (A, ...) per pair (t itself at k = 1: A = B, no copy)."""
        return t if self.k == 1 else t.repeat_interleave(self.k, dim=0)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """(A, ...) per pair -> (K, C, ...) blocks, zero padding."""
        out = t.new_zeros(self.experts, self.cap, *t.shape[1:])
        out[self.expert, self.row] = t
        return out

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        """(K, C, ...) blocks -> (A, ...) per pair, padding dropped."""
        return t[self.expert, self.row]


def pack(experts: torch.Tensor, n_experts: int) -> Packing:
    """(B, k) expert ids -> their Packing: each pair in its expert's next free row."""
    flat = experts.reshape(-1)  # (A,)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)  # (K,)
    starts = torch.cumsum(counts, 0) - counts
    row = torch.empty_like(flat)
    row[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    return Packing(flat, row, experts.shape[1], n_experts, int(counts.max()))


def on_blocks(model, x: torch.Tensor, packing: Packing):
    """Every expert layer of `model` (a MoEVAE) on the padded (K, C) blocks: x (B, D) -> its
    pairs' negative ELBOs and KL terms, (A,) each."""
    loss, kl = model.expert_losses(packing.pack(packing.pairs(x)))  # (K, C) each
    return packing.unpack(loss), packing.unpack(kl)


def routed_expert_loss(model, x: torch.Tensor, logits: torch.Tensor, k: int):
    """The gated expert loss and gated KL (scalars) of `model` (a MoEVAE) on x (B, D)
    with manager logits (B, K), running each expert on its own images only."""
    top_logits, top_e = logits.topk(k, dim=-1)  # (B, k)
    gates = torch.softmax(top_logits, -1)  # = p renormalised over S; exactly 1 (no grad) at k=1
    loss, kl = model.expert_losses(x, pack(top_e, logits.shape[1]))  # (A,) each
    loss, kl = loss.view(-1, k), kl.view(-1, k)  # (B, k)
    return (gates * loss).sum(1).mean(), (gates * kl).sum(1).mean()
