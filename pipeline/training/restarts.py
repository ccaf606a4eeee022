"""Label-free restarts: k-means' n_init for the clustering models.

Where an image lands is decided early and chaotically: the same MoE-VAE recipe gives one
digit per expert for most seeds and, for some, a 4/9 merge plus a split digit (docs/results.md,
"Run-to-run variance"). With train.restarts = R > 1 the train stage trains R candidate
initialisations for train.restart_epochs epochs each, scores every candidate on its own
training images, keeps the best and trains it on to train.epochs. The score is the mutual
information between an image and its cluster,

    I(x; k) = H(mean_n p(k|x_n)) - mean_n H(p(k|x_n))        nats, at most log K

high when the clusters are balanced and each image's choice is confident: the quantity
IMSAT maximises, read off the model without a label. A merged pair of digits and a split
one leave the clusters unbalanced and the choices of the split digit unsure, so they score
lower. Candidate 0 uses train.seed itself and candidate r the seed
seed + r * RESTART_SEED_STRIDE, for its initial weights, batch order and noise alike: a
run whose candidate 0 wins is the plain run, bit for bit.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch

from pipeline.core.distributed import sum_over_ranks
from pipeline.models.base import GenerativeModel

RESTART_SEED_STRIDE = 1_000_000  # candidate seeds never meet another run's train.seed
SCORE_CHUNK = 1000  # images scored at once
SCORE_SEED = 0  # the fixed binarization every candidate is scored on


def candidate_seed(seed: int, candidate: int) -> int:
    return seed + candidate * RESTART_SEED_STRIDE


@torch.no_grad()
def cluster_information(model: GenerativeModel, pixels: torch.Tensor,
                        device: torch.device = torch.device("cpu")) -> float:
    """I(x; k) in nats over the (N, 784) uint8 `pixels` (summed over every DDP rank's share),
    each image prepared once with a fixed seed, as evaluation prepares the test set."""
    gen = torch.Generator().manual_seed(SCORE_SEED)
    was_training = model.training
    model.eval()
    usage, entropy = None, torch.zeros((), dtype=torch.float64)
    for i in range(0, pixels.shape[0], SCORE_CHUNK):
        # drawn on the CPU with a fixed seed, wherever the pixels live: the same score on any device
        x = model.prepare(pixels[i:i + SCORE_CHUNK].cpu().float().div_(255), generator=gen)
        p = model.cluster_probs(x.to(device)).double().cpu()  # (B, K)
        usage = p.sum(0) if usage is None else usage + p.sum(0)
        entropy -= (p * p.clamp_min(1e-300).log()).sum()
    model.train(was_training)
    totals = sum_over_ranks(torch.cat([usage, entropy[None],
                                       torch.tensor([float(pixels.shape[0])], dtype=torch.float64)]))
    p_bar = totals[:-2] / totals[-1]
    h_marginal = -(p_bar * p_bar.clamp_min(1e-300).log()).sum()
    return float(h_marginal - totals[-2] / totals[-1])


def select(n: int, epochs: int, seed: int, new_run: Callable[[int], Any],
           train: Callable[[Any, int, str], None], score: Callable[[Any], float],
           save: Callable[[Any, dict], None] = lambda run, record: None,
           resume: Optional[Tuple[Any, dict]] = None,
           log: Callable[[str], None] = lambda line: None) -> Tuple[Any, dict]:
    """Train n candidate runs for `epochs` epochs each and return the best with a record
    {"scores", "chosen", "epochs", "discarded_seconds"} for train.json.

    new_run(seed) -> a fresh run (weights initialised from that seed) with a .timings list
    of per-epoch rows that carry "seconds"; train(run, epoch, label) trains one epoch;
    score(run) -> I(x; k). Only the best candidate so far is kept in memory; the first
    wins a tie, so candidate 0 (train.seed itself) wins unless another is strictly better.
    After each candidate is scored, save(best, record) checkpoints the best so far and the
    scores; resume = (that best, that record) goes on from the first unscored candidate.
    A candidate is a function of its seed alone, so a resumed choice ends as an
    uninterrupted one would; a failure costs at most the candidate under way."""
    best, record, scores, chosen, discarded = None, None, [], 0, 0.0
    if resume is not None:
        best, record = resume
        scores, chosen, discarded = list(record["scores"]), record["chosen"], record["discarded_seconds"]
        log(f"resuming the choice after restart {len(scores)}/{n} "
            f"(best so far: restart {chosen + 1}, I(x;k) = {scores[chosen]:.4f} nats)")
    for r in range(len(scores), n):
        run = new_run(candidate_seed(seed, r))
        for epoch in range(epochs):
            train(run, epoch, f"restart {r + 1}/{n} ")
        scores.append(score(run))
        log(f"restart {r + 1}/{n} (seed {candidate_seed(seed, r)}): I(x;k) = {scores[-1]:.4f} nats")
        loser = run
        if best is None or scores[-1] > scores[chosen]:
            loser, best, chosen = best, run, r
        if loser is not None:
            discarded += sum(row["seconds"] for row in loser.timings)
        record = {"scores": list(scores), "chosen": chosen, "epochs": epochs,
                  "discarded_seconds": discarded}
        save(best, record)
    log(f"keeping restart {chosen + 1}/{n}: the highest I(x;k) of {[round(s, 4) for s in scores]}")
    return best, record
