"""Label-reading evaluation: clustering scores and importance-sampled log-likelihood.

Evaluation (this package) is the only code that reads labels; training and model
selection never do.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.likelihood import log_likelihoods
from pipeline.models.base import GenerativeModel


def contingency(labels: np.ndarray, clusters: np.ndarray, n_clusters: int, n_classes: int = 10) -> np.ndarray:
    """(C, L) counts of (cluster, label) pairs."""
    table = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    return table


def hungarian_accuracy(labels: np.ndarray, clusters: np.ndarray, n_clusters: int,
                       n_classes: int = 10):
    """Unsupervised clustering accuracy: the best one-to-one map of clusters to labels
    (Hungarian algorithm on the contingency table), as in DEC/VaDE. With more clusters
    than classes the unmatched clusters count as errors. Returns (accuracy, map)."""
    table = contingency(labels, clusters, n_clusters, n_classes)
    rows, cols = linear_sum_assignment(-table)
    mapping = dict(zip(rows.tolist(), cols.tolist()))
    return float(table[rows, cols].sum()) / len(labels), mapping


def cluster_scores(labels: np.ndarray, clusters: np.ndarray, n_clusters: int) -> Dict[str, float]:
    acc, _ = hungarian_accuracy(labels, clusters, n_clusters)
    return {"cluster_accuracy": acc,
            "nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters))}


def mutual_information(probs: torch.Tensor) -> float:
    """I(x; k) = H(E_x[p(k|x)]) - E_x[H(p(k|x))] in nats, for (N, C) soft assignments.
    High when every image is sure of its cluster (small second term) and the clusters are
    used evenly (large first term); at most log C. IMSAT maximises it; no label enters."""
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(0)  # (C,)
    return float(-(marginal * marginal.log()).sum() + (p * p.log()).sum(1).mean())


def prepare_test(model: GenerativeModel, pixels: np.ndarray, seed: int) -> torch.Tensor:
    """uint8 (N, 784) -> float x; the Bernoulli likelihood binarizes once with a fixed seed
    so every model and every commit is scored on the same binary test set."""
    gen = torch.Generator().manual_seed(seed)
    return model.prepare(torch.from_numpy(pixels.copy()).float().div_(255), generator=gen)


KMEANS_CLUSTERS = 10  # kinds without a cluster variable: k-means with one cluster per class


@torch.no_grad()
def assign_clusters(model: GenerativeModel, x: torch.Tensor, batch_size: int, seed: int):
    """(N,) cluster ids, the cluster count, and the (N, L) latent means (cluster_outputs,
    then clusters_of)."""
    probs, codes = cluster_outputs(model, x, batch_size)
    return (*clusters_of(probs, codes, seed), codes)


@torch.no_grad()
def cluster_outputs(model: GenerativeModel, x: torch.Tensor, batch_size: int, codes: bool = True):
    """(N, C) cluster probabilities (None for kinds without a cluster variable) and the
    (N, L) latent means as a numpy array (None with codes=False: a caller that clusters
    by the probabilities and draws no latent plot needs none)."""
    probs, means = [], []
    for xb in x.split(batch_size):
        p = model.cluster_probs(xb)
        if p is not None:
            probs.append(p)
        if codes:
            means.append(model.latent_mean(xb))
    return (torch.cat(probs) if probs else None), (torch.cat(means).cpu().numpy() if codes else None)


def clusters_of(probs, codes: np.ndarray, seed: int):
    """(N,) cluster ids and the cluster count. Kinds with a cluster variable (MoE manager,
    mixture prior) use its argmax; the others get k-means on the latent means, fitted on
    these codes alone, never on labels."""
    if probs is not None:
        return probs.argmax(1).cpu().numpy(), probs.shape[1]
    km = KMeans(KMEANS_CLUSTERS, n_init=10, random_state=seed).fit(codes.astype(np.float64))
    return km.labels_, KMEANS_CLUSTERS


@torch.no_grad()
def evaluate_model(model: GenerativeModel, pixels: np.ndarray, labels: np.ndarray,
                   cfg: EvaluateConfig, log: Callable[[str], None] = print) -> Dict:
    """All metrics of one model on the test split, plus the arrays the plots need."""
    model.eval()
    torch.manual_seed(cfg.seed)
    x = prepare_test(model, pixels, cfg.seed)
    clusters, n_clusters, codes = assign_clusters(model, x, cfg.batch_size, cfg.seed)
    metrics = cluster_scores(labels, clusters, n_clusters)
    usage = np.bincount(clusters, minlength=n_clusters) / len(clusters)
    metrics["cluster_usage"] = {str(k): float(u) for k, u in enumerate(usage)}

    n_ll = len(x) if cfg.ll_limit is None else min(cfg.ll_limit, len(x))
    ll = log_likelihoods(model, x[:n_ll], cfg, log)  # likelihood.py: here, a GPU or Ray tasks
    metrics["test_log_likelihood"] = float(ll.mean())
    metrics["test_log_likelihood_sem"] = float(ll.std() / math.sqrt(len(ll))) if len(ll) > 1 else 0.0
    metrics["ll_images"] = n_ll
    metrics["iw_samples"] = cfg.iw_samples
    return {"metrics": metrics, "clusters": clusters, "n_clusters": n_clusters, "codes": codes, "x": x}
