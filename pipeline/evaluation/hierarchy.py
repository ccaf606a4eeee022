"""The second level of a hierarchical kind (hmoe_vae), on the evaluate stage's test set.

Inside each top-level cluster k (the manager's argmax), each image goes to its sub-expert
j = argmax_j p(j | x, k). Reported, per cluster: the share of its images each sub-expert
takes, the digit each sub-cluster holds most, and how much of the cluster's pixel
variance the split explains,

    R^2_k = sum_j n_kj |mean_kj - mean_k|^2 / sum_{x in k} |x - mean_k|^2   (grey pixels)

beside two references of the same cluster: a random split with the same sizes (what a
split that found nothing explains, about (J-1)/(n_k-1)) and k-means with J clusters on
the pixels (what a J-way split of those images can explain). Each sub-cluster's row in
plots/custom/sub_clusters.json also gives the mean of three label-free stroke measures (shape_stats),
so a split by slant, width or thickness shows in numbers. Pictures: samples of every
sub-expert and the test images each one claims most confidently (highest p(k, j | x)),
one row per top-level expert and one column group per sub-expert.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from sklearn.cluster import KMeans

from pipeline.core.figures import grid_image


def shape_stats(grey: np.ndarray, side: int = 28) -> np.ndarray:
    """(N, side*side) grey images -> (N, 3): ink (mean pixel), slant in degrees (the shear
    mu11 / mu02 of the ink's second moments; > 0 leans right, top to the right) and
    width (the ink's horizontal standard deviation, pixels)."""
    img = grey.reshape(-1, side, side)
    mass = img.sum((1, 2)).clip(1e-6)  # (N,)
    ys, xs = np.mgrid[:side, :side]
    cx = (img * xs).sum((1, 2)) / mass
    cy = (img * ys).sum((1, 2)) / mass
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    mu11, mu02, mu20 = ((img * m).sum((1, 2)) / mass for m in (dx * dy, dy * dy, dx * dx))
    slant = np.degrees(np.arctan(-mu11 / mu02.clip(1e-6)))  # image y grows downwards
    return np.stack([img.mean((1, 2)), slant, np.sqrt(mu20)], 1)


def explained(pixels: np.ndarray, groups: np.ndarray) -> float:
    """R^2 of a partition: between-group over total sum of squares, (N, D) and (N,)."""
    centred = pixels - pixels.mean(0)
    total = float((centred ** 2).sum())
    between = sum(float((groups == g).sum() * (centred[groups == g].mean(0) ** 2).sum())
                  for g in np.unique(groups))
    return between / total if total > 0 else 0.0


@torch.no_grad()
def sub_assign(model, x: torch.Tensor, clusters: np.ndarray, batch_size: int):
    """(N,) sub-expert of each image inside its cluster and (N,) p(k, j | x) of that pair,
    or None for a kind with one level."""
    subs, conf = [], []
    for xb, kb in zip(x.split(batch_size), torch.from_numpy(clusters).split(batch_size)):
        p_j = model.sub_cluster_probs(xb)  # (b, K, J) or None
        if p_j is None:
            return None
        rows, kb = torch.arange(len(kb), device=p_j.device), kb.to(p_j.device)
        p_j = p_j[rows, kb]  # (b, J) inside the image's cluster
        j = p_j.argmax(-1)
        p_k = model.cluster_probs(xb)[rows, kb]  # (b,)
        subs.append(j.cpu())
        conf.append((p_k * p_j[rows, j]).cpu())
    return torch.cat(subs).numpy(), torch.cat(conf).numpy()


def second_level(model, x: torch.Tensor, grey: np.ndarray, labels: np.ndarray, clusters: np.ndarray,
                 n_clusters: int, batch_size: int, seed: int) -> Optional[Dict]:
    """Metrics and per-sub-cluster rows of the second level; None for one-level kinds."""
    found = sub_assign(model, x, clusters, batch_size)
    if found is None:
        return None
    sub, conf = found
    n_sub = model.sub_cluster_probs(x[:1]).shape[-1]
    rng = np.random.default_rng(seed)
    stats = shape_stats(grey)  # (N, 3)
    usage, r2, r2_random, r2_kmeans, rows = {}, [], [], [], []
    for k in range(n_clusters):
        mine = clusters == k
        counts = np.bincount(sub[mine], minlength=n_sub)
        usage[str(k)] = {str(j): float(c / max(1, mine.sum())) for j, c in enumerate(counts)}
        split = {"expert_r2": "", "expert_r2_random_split": ""}
        if mine.sum() > n_sub:  # a split of fewer images than sub-experts says nothing
            px = grey[mine]
            r2.append(explained(px, sub[mine]))
            r2_random.append(explained(px, rng.permutation(sub[mine])))
            km = KMeans(n_sub, n_init=3, random_state=seed).fit(px.astype(np.float64))
            r2_kmeans.append(explained(px, km.labels_))
            split = {"expert_r2": round(r2[-1], 4), "expert_r2_random_split": round(r2_random[-1], 4)}
        for j in range(n_sub):
            digits = np.bincount(labels[mine & (sub == j)], minlength=10)
            ink, slant, width = stats[mine & (sub == j)].mean(0) if counts[j] else (np.nan,) * 3
            rows.append({"expert": k, "sub_expert": j, "images": int(counts[j]),
                         "share_in_expert": round(usage[str(k)][str(j)], 4),
                         "top_digit": int(digits.argmax()) if counts[j] else -1,
                         "top_digit_share": round(float(digits.max() / max(1, counts[j])), 4),
                         "ink": round(float(ink), 4), "slant_deg": round(float(slant), 1),
                         "width_px": round(float(width), 2), **split})
    metrics = {  # the R^2 means are None when no cluster had images enough to split
        "sub_cluster_usage": usage,
        "sub_usage_min": float(min(min(u.values()) for k, u in usage.items() if (clusters == int(k)).any())),
        "sub_variance_explained": float(np.mean(r2)) if r2 else None,
        "sub_variance_explained_random_split": float(np.mean(r2_random)) if r2 else None,
        "sub_variance_explained_kmeans": float(np.mean(r2_kmeans)) if r2 else None,
        # purity: share of images whose (sub-)cluster's most common digit is their own
        "cluster_purity": purity(labels, clusters),
        "leaf_purity": purity(labels, clusters * n_sub + sub),
    }
    return {"metrics": metrics, "rows": rows, "sub": sub, "confidence": conf, "n_sub": n_sub}


def purity(labels: np.ndarray, groups: np.ndarray) -> float:
    return float(sum(np.bincount(labels[groups == g]).max() for g in np.unique(groups)) / len(labels))


def grouped(images: np.ndarray) -> np.ndarray:
    """(K, J, n, D) -> (K, J*n + J-1, D): each sub-expert's n images, a blank cell between."""
    k, j, n, d = images.shape
    blank = np.zeros((k, j, 1, d), dtype=images.dtype)
    return np.concatenate([images, blank], 2).reshape(k, j * (n + 1), d)[:, :-1]


def log_hierarchy_plots(live, model, hier: Dict, grey: np.ndarray, labels: np.ndarray,
                        clusters: np.ndarray, n_clusters: int, seed: int, n: int = 4) -> None:
    """Into the dvclive folder: plots/custom/sub_clusters.json (a row per sub-cluster: its
    share of its cluster, top digit and stroke measures; drawn as a bar per leaf k.j), and
    sub_expert_samples.png and sub_expert_claims.png: one row per top-level expert k, one
    group of n columns per sub-expert j (a blank column between groups)."""
    live.log_plot("sub_clusters", [{"leaf": f"{r['expert']}.{r['sub_expert']}", **r} for r in hier["rows"]],
                  x="share_in_expert", y="leaf", template="bar_horizontal",
                  title=f"{model.cfg.kind}: each sub-expert's share of its expert's test images")
    n_sub = hier["n_sub"]
    torch.manual_seed(seed)
    samples = model.sample_components(n).cpu().numpy()  # (K*J, n, D), leaf k*J + j
    live.log_image("sub_expert_samples.png", grid_image(grouped(samples.reshape(n_clusters, n_sub, n, -1))))
    claims = np.zeros((n_clusters, n_sub, n, grey.shape[1]), dtype=np.float32)
    for k in range(n_clusters):
        for j in range(n_sub):
            mine = np.flatnonzero((clusters == k) & (hier["sub"] == j))
            best = mine[np.argsort(-hier["confidence"][mine], kind="stable")[:n]]
            claims[k, j, :len(best)] = grey[best]
    live.log_image("sub_expert_claims.png", grid_image(grouped(claims)))
