"""The evaluate stage's pictures (sample grids, confusion, latent view, morphing) and the
per-image CSV files DVC renders."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict

import numpy as np

from pipeline.core.figures import plt, save_grid
from pipeline.core.io import save_figure, write_rows_csv, write_text
from pipeline.evaluation.metrics import contingency, hungarian_accuracy


def save_confusion(path_png: Path, path_csv: Path, labels: np.ndarray,
                   clusters: np.ndarray, n_clusters: int, title: str) -> None:
    """Confusion of true digit vs cluster (columns in Hungarian order) as PNG, and the
    (actual, predicted) rows DVC's confusion template reads."""

    _, mapping = hungarian_accuracy(labels, clusters, n_clusters)
    order = sorted(range(n_clusters), key=lambda k: mapping.get(k, 10 + k))
    table = contingency(labels, clusters, n_clusters).T[:, order]  # (labels, clusters)
    fig, ax = plt.subplots(figsize=(0.5 * n_clusters + 2, 6))
    ax.imshow(table, cmap="Blues")
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            ax.text(j, i, str(table[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if table[i, j] > table.max() / 2 else "black")
    ax.set_xticks(range(n_clusters), [f"{k}" for k in order], fontsize=7)
    ax.set_yticks(range(10), [str(d) for d in range(10)], fontsize=7)
    ax.set_xlabel("cluster (ordered by matched digit)")
    ax.set_ylabel("true digit")
    ax.set_title(title, fontsize=10)
    save_figure(fig, path_png)
    plt.close(fig)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["actual", "predicted"])
    w.writerows(zip(labels.tolist(), [mapping.get(int(c), -1) for c in clusters]))
    write_text(path_csv, buf.getvalue())


def save_latent(path_png: Path, path_csv: Path, codes: np.ndarray, labels: np.ndarray,
                title: str, csv_rows: int = 2000) -> None:
    """Test-set codes (N, L) in 2-D, coloured by true class: the first two dims when L = 2,
    else the top two principal components. The CSV (x, y, digit) feeds DVC's scatter."""
    if codes.shape[1] == 2:
        xy, axes = codes, ("z1", "z2")
    else:
        centred = codes - codes.mean(0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        xy, share = centred @ vt[:2].T, sv ** 2 / (sv ** 2).sum()
        axes = (f"PC1 ({share[0]:.0%} of variance)", f"PC2 ({share[1]:.0%})")
    fig, ax = plt.subplots(figsize=(6, 5.5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=2, alpha=0.6)
    fig.colorbar(points, ax=ax, ticks=range(10), label="true class")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=10)
    save_figure(fig, path_png)
    plt.close(fig)
    write_rows_csv(path_csv, [{"x": round(float(a), 4), "y": round(float(b), 4), "digit": int(d)}
                              for a, b, d in zip(xy[:csv_rows, 0], xy[:csv_rows, 1], labels[:csv_rows])])


# Pairs of classes to morph between: the digits unsupervised MNIST models confuse most.
MORPH_PAIRS = [(3, 5), (4, 9), (7, 9), (1, 7), (0, 6), (2, 8)]


def write_evaluation_plots(out_dir: Path, model, labels: np.ndarray, result: Dict, seed: int,
                           rows: int = 8) -> None:
    """confusion.png/.csv, samples.png, component_samples.png (one column per expert or
    mixture component), reconstructions.png, latent.png/.csv, morph.png."""
    import torch

    kind = model.cfg.kind
    save_confusion(out_dir / "confusion.png", out_dir / "confusion.csv", labels,
                   result["clusters"], result["n_clusters"], f"{kind}: true class vs cluster")
    save_latent(out_dir / "latent.png", out_dir / "latent.csv", result["codes"], labels,
                f"{kind}: test-set latent means by true class")
    torch.manual_seed(seed)
    save_grid(out_dir / "samples.png", model.sample(rows * rows).cpu().numpy().reshape(rows, rows, -1),
              f"{kind}: random samples")
    firsts = [int(np.flatnonzero(labels == d)[0]) if (labels == d).any() else 0 for d in range(10)]
    a, b = ([firsts[p[i]] for p in MORPH_PAIRS] for i in (0, 1))
    steps = 10
    save_grid(out_dir / "morph.png", model.morph(result["x"][a], result["x"][b], steps).cpu().numpy(),
              f"{kind}: decoding the straight line between two test codes",
              row_labels=[f"{p[0]}->{p[1]}" for p in MORPH_PAIRS])
    torch.manual_seed(seed)
    comps = model.sample_components(rows).cpu().numpy()  # (C, rows, D)
    save_grid(out_dir / "component_samples.png", comps.transpose(1, 0, 2),
              f"{kind}: samples, one column per component (expert or prior mode)",
              col_labels=[str(k) for k in range(comps.shape[0])])
    x = result["x"][:rows * 2]
    recon = model.reconstruct(x).cpu().numpy()
    shown = model.pixels(x).numpy()  # the binarized image, also beside a grey-input manager
    pairs = np.stack([shown.reshape(2, rows, -1), recon.reshape(2, rows, -1)], 1)  # (2, 2, rows, D)
    save_grid(out_dir / "reconstructions.png", pairs.reshape(4, rows, -1),
              f"{kind}: test images (rows 1, 3) and reconstructions (rows 2, 4)")
