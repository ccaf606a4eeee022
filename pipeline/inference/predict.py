"""A trained model on new images: each image's cluster, and samples of every component.

Both go the evaluate stage's way (pipeline/evaluation/): the pixels become the model's
input through metrics.prepare_test (a Bernoulli model binarizes them with a fixed seed),
clusters are the argmax of the kind's `cluster_probs`, the second level of a hierarchical
kind comes from hierarchy.sub_assign, and the sample grid is plots.py's
component_samples.png, drawn from the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.figures import grid_image
from pipeline.evaluation.hierarchy import sub_assign
from pipeline.evaluation.metrics import KMEANS_CLUSTERS, assign_clusters, prepare_test
from pipeline.models.base import GenerativeModel
from pipeline.models.registry import KINDS

CLUSTERED_KINDS = sorted(name for name, k in KINDS.items() if k.model.has_clusters)


@dataclass
class Clusters:
    """What cluster_images finds for N images."""
    names: List[str]  # (N,) one per image, as read_images gave them
    probs: Optional[np.ndarray]  # (N, C) float32, p(c | x): the MoE manager's routing or the
    # prior's responsibilities; None for a kind clustered by k-means (no probabilities)
    kmeans: Optional[np.ndarray] = None  # (N,) k-means cluster of each image (vae, mmd_vae)
    sub_cluster: Optional[np.ndarray] = None  # (N,) hmoe_vae: the sub-expert j inside the cluster
    leaf_probability: Optional[np.ndarray] = None  # (N,) hmoe_vae: p(c, j | x) of that pair

    @property
    def cluster(self) -> np.ndarray:
        """(N,) int: argmax_c p(c | x), or the k-means cluster: the evaluate stage's."""
        return self.probs.argmax(1) if self.probs is not None else self.kmeans

    @property
    def probability(self) -> np.ndarray:
        """(N,) p(c | x) of that cluster (NaN for k-means clusters)."""
        return self.probs.max(1) if self.probs is not None else np.full(len(self.names), np.nan)

    def counts(self) -> np.ndarray:
        """(C,) images per cluster."""
        return np.bincount(self.cluster, minlength=KMEANS_CLUSTERS if self.probs is None
                           else self.probs.shape[1])

    def rows(self) -> List[Dict]:
        """One dict per image: name, cluster, probability (empty for k-means clusters; +
        sub_cluster, leaf_probability for hmoe_vae)."""
        rows = [{"name": n, "cluster": int(c), "probability": "" if np.isnan(p) else round(float(p), 6)}
                for n, c, p in zip(self.names, self.cluster, self.probability)]
        if self.sub_cluster is not None:
            for row, j, p in zip(rows, self.sub_cluster, self.leaf_probability):
                row.update(sub_cluster=int(j), leaf_probability=round(float(p), 6))
        return rows


@torch.no_grad()
def cluster_images(model: GenerativeModel, pixels: np.ndarray, names: Optional[List[str]] = None,
                   batch_size: int = 100, seed: int = 0) -> Clusters:
    """(N, 784) uint8 pixels (white ink on black) -> each image's cluster, as the evaluate
    stage finds it with evaluate.seed = `seed`. A kind without a cluster variable (vae,
    mmd_vae) gets evaluate's k-means on the latent means of these N images: its cluster
    ids depend on the images passed together (the whole test split gives evaluate's)."""
    if batch_size < 1:
        raise PipelineError(f"batch size {batch_size}: use an integer >= 1")
    if not model.has_clusters and len(pixels) < KMEANS_CLUSTERS:
        raise PipelineError(f"a {model.cfg.kind} model has no cluster variable, so its {len(pixels)} "
                            f"images are clustered by k-means into {KMEANS_CLUSTERS}: pass at least "
                            f"{KMEANS_CLUSTERS} images")
    model.eval()
    x = prepare_test(model, pixels, seed)  # (N, 784), or (N, 2, 784) for a grey-reading manager
    names = list(names) if names is not None else [str(i) for i in range(len(pixels))]
    if not model.has_clusters:
        return Clusters(names=names, probs=None, kmeans=assign_clusters(model, x, batch_size, seed)[0])
    probs = torch.cat([model.cluster_probs(xb) for xb in x.split(batch_size)])  # (N, C)
    found = Clusters(names=names, probs=probs.float().numpy())
    second = sub_assign(model, x, found.cluster, batch_size)  # None for one-level kinds
    if second is not None:
        found.sub_cluster, found.leaf_probability = second
    return found


@torch.no_grad()
def sample_grid(model: GenerativeModel, n: int = 8, seed: int = 0, scale: int = 2) -> np.ndarray:
    """(H, W) uint8 picture, dark ink on white: n rows of samples, one column per expert
    (moe_vae), sub-expert (hmoe_vae, expert-major) or prior component (gmm_vae); vae and
    mmd_vae have one column. With n = 8 and seed = evaluate.seed it is the evaluate
    stage's component_samples.png."""
    if n < 1:
        raise PipelineError(f"--n {n}: ask for at least one sample per component")
    model.eval()
    torch.manual_seed(seed)
    comps = model.sample_components(n).cpu().numpy()  # (C, n, 784)
    return grid_image(comps.transpose(1, 0, 2), scale=scale)  # (n, C, 784) -> a row per draw
