"""Scores for choosing between recipes without the test split.

Recipes are compared on a validation split carved from the training images: the last
VAL_ROWS rows of the train split, as the sweep holds out its tune.val_rows. Training is
unsupervised, so a run sees these images' pixels, as any clusterer sees the images it
clusters, but never their labels; this module is the only reader of those labels, and the
test split is never read here. Two scores per run:
  val_cluster_accuracy  Hungarian accuracy of the run's clusters on those images
  val_mutual_info       I(x; k) of its soft assignments on them (label-free; kinds with a
                        cluster variable only)
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import numpy as np
import torch

from pipeline.core.errors import DataError
from pipeline.data.load import load_split
from pipeline.evaluation.metrics import (cluster_outputs, cluster_scores, clusters_of, mutual_information,
                                         prepare_test)
from pipeline.models.checkpoint import load_model

VAL_ROWS = 10000  # the last 10 000 training images, as tune.val_rows counts them
SEED = 0  # the binarization and k-means seed: the same images for every run


@torch.no_grad()
def validation_scores(model, pixels: np.ndarray, labels: np.ndarray, batch_size: int = 500,
                      seed: int = SEED) -> Dict[str, float]:
    """Scores of one model on (N, 784) uint8 `pixels`; `labels` are read after the
    label-free score."""
    model.eval()
    torch.manual_seed(seed)
    x = prepare_test(model, pixels, seed)
    # one pass over the images; the latent means only where k-means needs them
    probs, codes = cluster_outputs(model, x, batch_size, codes=not model.has_clusters)
    info = mutual_information(probs) if probs is not None else float("nan")
    clusters, n_clusters = clusters_of(probs, codes, seed)
    scores = cluster_scores(labels, clusters, n_clusters)
    return {"val_cluster_accuracy": scores["cluster_accuracy"], "val_nmi": scores["nmi"],
            "val_mutual_info": info, "val_images": len(pixels)}


def validate_run(shards: Path, model_path: Path, rows: int = VAL_ROWS) -> Dict[str, float]:
    """validation_scores of the model file on the last `rows` training images (all of
    them where there are fewer, as with data.train_limit)."""
    if rows < 1:
        raise DataError(f"validation rows={rows} selects no image; use an integer >= 1")
    train = load_split(shards, "train", with_labels=True)
    rows = min(rows, len(train.pixels))
    return validation_scores(load_model(model_path), train.pixels[-rows:], train.labels[-rows:])
