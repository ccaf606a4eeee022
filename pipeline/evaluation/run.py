"""The evaluate stage: load the model and the labelled test split, score, draw, and log
it all through dvclive (and, for a hierarchical kind, its second level: hierarchy.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

from pipeline.core.io import atomic_path
from pipeline.core.tracking import open_live
from pipeline.data.load import load_split
from pipeline.evaluation.config import EvaluateConfig
from pipeline.evaluation.hierarchy import log_hierarchy_plots, second_level
from pipeline.evaluation.metrics import evaluate_model
from pipeline.evaluation.plots import log_evaluation_plots
from pipeline.models.checkpoint import load_model


def evaluate_stage(cfg: EvaluateConfig, shards: Path, model_path: Path, live_dir: Path,
                   log: Callable[[str], None] = print) -> Dict:
    """Write the dvclive folder `live_dir` of one model file (metrics.json: the metrics;
    plots/: pictures and plot data), all at once; return the metrics."""
    model = load_model(model_path)
    test = load_split(shards, "test", with_labels=True)
    result = evaluate_model(model, test.pixels, test.labels, cfg, log=log)
    grey = test.pixels.astype("float32") / 255
    hier = second_level(model, result["x"], grey, test.labels, result["clusters"], result["n_clusters"],
                        cfg.batch_size, cfg.seed)
    with atomic_path(live_dir) as tmp:
        live = open_live(tmp)
        log_evaluation_plots(live, model, test.labels, result, cfg.seed)
        if hier is not None:  # a kind whose clusters are mixtures themselves (hmoe_vae)
            result["metrics"].update(hier["metrics"])
            log_hierarchy_plots(live, model, hier, grey, test.labels, result["clusters"],
                                result["n_clusters"], cfg.seed)
        live.summary.update(result["metrics"])
        live.make_summary()
    return result["metrics"]
