"""One row per preset, mean +- std over seeds, from the runs' own metrics files.

Reads <set>/runs/<preset>/seed<S>/{train,evaluate}/metrics.json (dvclive's summaries)
and train_run.json, written by the train and evaluate stages of <set>/dvc.yaml, so every
number in the table comes from the stages.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.io import write_rows_csv, write_text
from pipeline.experiments.config import ExperimentsConfig
from pipeline.experiments.presets import load_preset
from pipeline.params import variant


def run_dir(runs_dir: Path, preset: str, seed: int) -> Path:
    return Path(runs_dir) / preset / f"seed{seed}"


def read_run_metrics(path: Path, how: str) -> Dict[str, dict]:
    """{"train": ..., "evaluate": ...} of one run; a missing file says `how` to make it."""
    found = {}
    for source in ("train", "evaluate"):
        file = Path(path) / source / "metrics.json"
        if not file.exists():
            raise DataError(f"{file} is missing; {how}")
        found[source] = json.loads(file.read_text())
    record = Path(path) / "train_run.json"  # wall time and hardware; runs made before the
    if record.exists():                     # record existed kept them in train.json
        found["train"].update({k: v for k, v in json.loads(record.read_text()).items()
                               if k in ("train_seconds", "hardware")})
    return found


def sample_std(values: List[float]) -> float:
    """Standard deviation with n - 1 in the denominator (0 for a single run)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table_rows(runs_dir: Path, cfg: ExperimentsConfig, set_name: str,
               kinds: Dict[str, Tuple[str, str]]) -> List[Dict]:
    """One row per preset of `cfg`, aggregated over cfg.seeds (sample std, n - 1: with 3
    seeds the population std would understate the spread by a fifth). `kinds` maps each
    preset to its (model.kind, model.likelihood.name). A preset with some of its seeds not
    run yet (`dvc repro -s` of single runs, then the table) gets a row over the runs it
    has, marked "n=2 of 3"; one with none is an error."""
    rows = []
    for preset in cfg.presets:
        description, _ = load_preset(Path(cfg.presets_dir) / f"{preset}.yaml")
        runs, missing = [], []
        for s in cfg.seeds:
            try:
                runs.append(read_run_metrics(run_dir(runs_dir, preset, s), f"run `dvc repro {set_name}/"
                                             f"dvc.yaml` (it trains and evaluates every preset for every "
                                             f"seed first)"))
            except DataError as e:  # a seed not run yet: the row is over the others
                missing.append(e)
        if not runs:
            raise missing[0]
        train, evaluate = [r["train"] for r in runs], [r["evaluate"] for r in runs]
        acc = [e["cluster_accuracy"] for e in evaluate]
        nll = [-e["test_log_likelihood"] for e in evaluate]
        kind, likelihood = kinds[preset]
        rows.append({
            "preset": preset, "kind": kind, "recipe": description, "seeds": len(runs),
            "cluster_accuracy_mean": float(np.mean(acc)), "cluster_accuracy_std": sample_std(acc),
            "nmi_mean": float(np.mean([e.get("nmi", float("nan")) for e in evaluate])),
            "nll_mean": float(np.mean(nll)), "nll_std": sample_std(nll), "likelihood": likelihood,
            "ll_images": evaluate[0].get("ll_images", ""), "iw_samples": evaluate[0].get("iw_samples", ""),
            "epochs": train[0]["epochs"],
            "train_minutes": float(np.mean([t["train_seconds"] for t in train]) / 60),
            "hardware": "; ".join(dict.fromkeys(t.get("hardware", "unknown") for t in train)),
            "of_seeds": len(cfg.seeds),
        })
    return rows


def mean_std(mean: float, std: float, n: int, digits: int) -> str:
    """'0.9700 ± 0.0040'; one run has no spread to show, so just '0.9700'."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def markdown(rows: List[Dict]) -> str:
    head = ("| preset | kind | recipe | cluster accuracy (mean ± std) | NMI | NLL, nats (mean ± std) "
            "| likelihood | epochs | train min / seed | hardware |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        acc = mean_std(r["cluster_accuracy_mean"], r["cluster_accuracy_std"], r["seeds"], 4)
        nll = mean_std(r["nll_mean"], r["nll_std"], r["seeds"], 2)
        n = r["seeds"] if r["of_seeds"] == r["seeds"] else f"{r['seeds']} of {r['of_seeds']}"
        lines.append(f"| {r['preset']} | {r['kind']} | {r['recipe']} | {acc} (n={n}) | "
                     f"{r['nmi_mean']:.4f} | {nll} | {r['likelihood']} ({r['ll_images']} images × "
                     f"{r['iw_samples']} samples) | {r['epochs']} | {r['train_minutes']:.1f} | "
                     f"{r['hardware']} |")
    return "\n".join(lines) + "\n"


def write_table(params, set_name: str, runs_dir: Path, md: Path, csv: Path) -> str:
    """<set>/table.md and table.csv of experiment set `set_name` ('compare' | 'results')
    of `params` (a pipeline.params.Params); returns the markdown."""
    cfg: ExperimentsConfig = getattr(params, set_name)
    kinds = {}
    for preset in cfg.presets:
        model = variant(params, set_name, preset, cfg.seeds[0]).model
        kinds[preset] = (model.kind, model.likelihood.name)
    rows = table_rows(runs_dir, cfg, set_name, kinds)
    text = markdown(rows)
    write_rows_csv(csv, rows)
    write_text(md, text)
    return text
