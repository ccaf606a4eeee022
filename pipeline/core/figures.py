"""Matplotlib without a display, and the image grid every stage's pictures are made of."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.core.io import save_figure  # noqa: E402


def grid(images: np.ndarray) -> np.ndarray:
    """(R, C, 784) in [0, 1] -> one (R*28 + R-1, C*28 + C-1) picture with 1-px gutters."""
    r, c = images.shape[:2]
    out = np.ones((r * 29 - 1, c * 29 - 1))
    for i in range(r):
        for j in range(c):
            out[i * 29:i * 29 + 28, j * 29:j * 29 + 28] = images[i, j].reshape(28, 28)
    return out


def save_grid(path: Path, images: np.ndarray, title: str,
              col_labels: Optional[Sequence[str]] = None,
              row_labels: Optional[Sequence[str]] = None) -> None:
    r, c = images.shape[:2]
    fig, ax = plt.subplots(figsize=(max(3.0, 0.6 * c), max(2.0, 0.6 * r) + 0.6))
    ax.imshow(grid(images), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([j * 29 + 13.5 for j in range(c)] if col_labels else [], col_labels or [], fontsize=7)
    ax.set_yticks([i * 29 + 13.5 for i in range(r)] if row_labels else [], row_labels or [], fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def save_components_over_epochs(path: Path, snapshots: np.ndarray, kind: str, max_rows: int = 12) -> None:
    """(E, C, D) uint8 per-epoch samples (same noise every epoch), one column per component."""
    epochs = np.unique(np.linspace(0, len(snapshots) - 1, min(max_rows, len(snapshots))).round().astype(int))
    save_grid(path, snapshots[epochs] / 255.0, f"{kind}: one sample per component, by epoch",
              col_labels=[str(k) for k in range(snapshots.shape[1])],
              row_labels=[f"ep {e + 1}" for e in epochs])
