"""The evaluate stage's pictures and plot data, logged through dvclive: sample grids,
reconstructions, morphing, the latent view, and the confusion matrix DVC renders."""
from __future__ import annotations

from typing import Dict

import numpy as np

from pipeline.core.figures import grid_image, plt
from pipeline.evaluation.metrics import hungarian_accuracy


def latent_xy(codes: np.ndarray):
    """Test-set codes (N, L) in 2-D: the first two dims when L = 2, else the top two
    principal components. Returns (xy (N, 2), axis names)."""
    if codes.shape[1] == 2:
        return codes, ("z1", "z2")
    centred = codes - codes.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    share = sv ** 2 / (sv ** 2).sum()
    return centred @ vt[:2].T, (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%})")


def log_latent(live, codes: np.ndarray, labels: np.ndarray, title: str, rows: int = 2000) -> None:
    """latent.png (every test code, coloured by true class: DVC's scatter template colours
    by revision, not by a field) and plots/custom/latent.json (the first `rows` points)."""
    xy, axes = latent_xy(codes)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=2, alpha=0.6)
    fig.colorbar(points, ax=ax, ticks=range(10), label="true class")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    live.log_image("latent.png", fig)  # dvclive saves and closes it
    live.log_plot("latent", [{"x": round(float(a), 4), "y": round(float(b), 4), "digit": int(d)}
                             for a, b, d in zip(xy[:rows, 0], xy[:rows, 1], labels[:rows])],
                  x="x", y="y", template="scatter", title=title, x_label=axes[0], y_label=axes[1])


# Pairs of classes to morph between: the digits unsupervised MNIST models confuse most.
MORPH_PAIRS = [(3, 5), (4, 9), (7, 9), (1, 7), (0, 6), (2, 8)]


def log_evaluation_plots(live, model, labels: np.ndarray, result: Dict, seed: int, rows: int = 8) -> None:
    """Into the dvclive folder: plots/sklearn/confusion_matrix.json (true digit vs the
    digit each cluster is matched to; -1 for a cluster left unmatched), the latent view,
    and the image grids: samples.png (rows x rows draws), component_samples.png (one
    column per expert or mixture component), morph.png (one row per MORPH_PAIRS pair),
    reconstructions.png (rows 1, 3: test images; rows 2, 4: their reconstructions)."""
    import torch

    kind = model.cfg.kind
    _, mapping = hungarian_accuracy(labels, result["clusters"], result["n_clusters"])
    live.log_sklearn_plot("confusion_matrix", labels, [mapping.get(int(c), -1) for c in result["clusters"]],
                          title=f"{kind}: true digit vs matched cluster", x_label="true digit",
                          y_label="matched cluster")
    log_latent(live, result["codes"], labels, f"{kind}: test-set latent means by true class")
    torch.manual_seed(seed)
    live.log_image("samples.png", grid_image(model.sample(rows * rows).cpu().numpy().reshape(rows, rows, -1)))
    firsts = [int(np.flatnonzero(labels == d)[0]) if (labels == d).any() else 0 for d in range(10)]
    a, b = ([firsts[p[i]] for p in MORPH_PAIRS] for i in (0, 1))
    live.log_image("morph.png", grid_image(model.morph(result["x"][a], result["x"][b], 10).cpu().numpy()))
    torch.manual_seed(seed)
    comps = model.sample_components(rows).cpu().numpy()  # (C, rows, D)
    live.log_image("component_samples.png", grid_image(comps.transpose(1, 0, 2)))
    x = result["x"][:rows * 2]
    recon = model.reconstruct(x).cpu().numpy()
    shown = model.pixels(x).numpy()  # the binarized image, also beside a grey-input manager
    pairs = np.stack([shown.reshape(2, rows, -1), recon.reshape(2, rows, -1)], 1)  # (2, 2, rows, D)
    live.log_image("reconstructions.png", grid_image(pairs.reshape(4, rows, -1)))
