"""The evaluate stage: load the model and the labelled test split, score, draw, write
(and, for a hierarchical kind, its second level: hierarchy.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

from pipeline.core.io import write_json
from pipeline.data.shards import load_split
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.hierarchy import second_level, write_hierarchy_plots
from pipeline.evaluation.metrics import evaluate_model
from pipeline.evaluation.plots import write_evaluation_plots
from pipeline.models.checkpoint import load_model


def evaluate_stage(cfg: EvaluateConfig, shards: Path, model_path: Path, metrics: Path,
                   plots: Path, log: Callable[[str], None] = print) -> Dict:
    """Write metrics JSON and the pictures of one model file; return the metrics."""
    model = load_model(model_path)
    test = load_split(shards, "test", with_labels=True)
    result = evaluate_model(model, test.pixels, test.labels, cfg, log=log)
    write_evaluation_plots(plots, model, test.labels, result, cfg.seed)
    grey = test.pixels.astype("float32") / 255
    hier = second_level(model, result["x"], grey, test.labels, result["clusters"], result["n_clusters"],
                        cfg.batch_size, cfg.seed)
    if hier is not None:  # a kind whose clusters are mixtures themselves (hmoe_vae)
        result["metrics"].update(hier["metrics"])
        write_hierarchy_plots(plots, model, hier, grey, test.labels, result["clusters"],
                              result["n_clusters"], cfg.seed)
    write_json(metrics, result["metrics"])
    return result["metrics"]
