"""The README's results table: every preset of results.presets, mean +- std over seeds.

Reads results/runs/<preset>/seed<S>/{train,evaluate}.json, written by the
results_train / results_evaluate stages (results/dvc.yaml), so every number in the
table comes from the pipeline's own stages; `write_readme_block` pastes it into README.md
between the two marker lines, never by hand.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from pipeline.compare import read_run_metrics
from pipeline.config import Params
from pipeline.data import DataError
from pipeline.presets import load_preset, preset_path, preset_variant

BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"


def run_dir(runs_dir: Path, preset: str, seed: int) -> Path:
    return Path(runs_dir) / preset / f"seed{seed}"


def sample_std(values: List[float]) -> float:
    """Standard deviation with n - 1 in the denominator (0 for a single run)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def results_rows(runs_dir: Path, params: Params) -> List[Dict]:
    """One row per preset, aggregated over results.seeds (sample std, n - 1: with 3 seeds the
    population std would understate the spread by a fifth)."""
    rows = []
    for preset in params.results.presets:
        description, _ = load_preset(preset_path(params, preset))
        model = preset_variant(params, preset, params.results.seeds[0]).model
        runs = [(m["train"], m["evaluate"]) for m in (
            read_run_metrics(run_dir(runs_dir, preset, s), "run `dvc repro results/dvc.yaml` (it "
                             "trains and evaluates every preset for every seed first)")
            for s in params.results.seeds)]
        acc = [e["cluster_accuracy"] for _, e in runs]
        nll = [-e["test_log_likelihood"] for _, e in runs]
        rows.append({
            "preset": preset, "kind": model.kind,
            "recipe": description, "seeds": len(runs),
            "cluster_accuracy_mean": float(np.mean(acc)), "cluster_accuracy_std": sample_std(acc),
            "nll_mean": float(np.mean(nll)), "nll_std": sample_std(nll),
            "likelihood": model.likelihood,
            "ll_images": runs[0][1].get("ll_images", ""), "iw_samples": runs[0][1].get("iw_samples", ""),
            "epochs": runs[0][0]["epochs"],
            "train_minutes": float(np.mean([t["train_seconds"] for t, _ in runs]) / 60),
            "hardware": "; ".join(dict.fromkeys(t.get("hardware", "unknown") for t, _ in runs)),
        })
    return rows


def markdown(rows: List[Dict]) -> str:
    head = ("| preset | kind | recipe | cluster accuracy (mean ± std) | NLL, nats (mean ± std) "
            "| likelihood | epochs | train min / seed | hardware |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        acc = f"{r['cluster_accuracy_mean']:.4f} ± {r['cluster_accuracy_std']:.4f}"
        nll = f"{r['nll_mean']:.2f} ± {r['nll_std']:.2f}"
        lines.append(f"| {r['preset']} | {r['kind']} | {r['recipe']} | {acc} (n={r['seeds']}) | "
                     f"{nll} | {r['likelihood']} ({r['ll_images']} images × {r['iw_samples']} "
                     f"samples) | {r['epochs']} | {r['train_minutes']:.1f} | {r['hardware']} |")
    return "\n".join(lines) + "\n"


def write_readme_block(readme: Path, table: str) -> str:
    """README text with the block between BEGIN and END replaced by `table`."""
    text = readme.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise DataError(f"{readme} needs one '{BEGIN}' line followed by one '{END}' line")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}{END}{tail}"
