"""Image grids (torchvision's make_grid) and matplotlib without a display.

Pictures are logged through dvclive (pipeline/core/tracking.py): a grid is a plain uint8
array, so the same pixels give the same PNG bytes on every run."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "grid_image", "over_epochs"]  # plt: pyplot on Agg, for the figure makers


def grid_image(images: np.ndarray, scale: int = 2) -> np.ndarray:
    """(R, C, 784) pixels, uint8 or in [0, 1] -> one (H, W) uint8 picture, dark ink on
    white: row r, column c is images[r, c] (torchvision.utils.make_grid with a 2-px
    gutter), each pixel drawn `scale` x `scale` so that the digits are legible."""
    import torch
    from torchvision.utils import make_grid

    r, c = images.shape[:2]
    t = torch.as_tensor(np.asarray(images, dtype=np.float32).reshape(r * c, 1, 28, 28))
    if images.dtype == np.uint8:
        t = t / 255
    g = make_grid(1 - t.clamp(0, 1), nrow=c, padding=2, pad_value=1.0)[0]  # (H, W)
    g = g.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return (g * 255).round().to(torch.uint8).numpy()


def over_epochs(snapshots: np.ndarray, max_rows: int = 12) -> np.ndarray:
    """(E, C, D) per-epoch samples (same noise every epoch) -> up to max_rows evenly spread
    epochs, first and last included: (rows, C, D) and the epoch numbers shown."""
    picked = np.unique(np.linspace(0, len(snapshots) - 1, min(max_rows, len(snapshots))).round().astype(int))
    return snapshots[picked], picked + 1
