"""One table of every preset's runs, mean +- std over seeds, from the runs' own metrics.

Two kinds of row, each saying where it came from:
- current: the runs experiments/dvc.yaml made on this commit's code, read from
  experiments/runs/<preset>/seed<S>/{train,evaluate}.json and train_run.json;
- historical: runs recorded on older code (experiments/archive/runs/, listed with the
  commit that recorded each in experiments/archive/index.yaml). No stage makes them, so
  nothing reruns them by accident.
No number is typed in: the table stage writes every figure from those files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import yaml

from pipeline.core.errors import DataError
from pipeline.core.io import write_rows_csv, write_text


def read_yaml(path: Path) -> dict:
    if not Path(path).exists():
        raise DataError(f"{path} is missing; run `python -m pipeline.experiments.index`")
    return yaml.safe_load(Path(path).read_text()) or {}


def run_dir(runs_dir: Path, preset: str, seed: int) -> Path:
    return Path(runs_dir) / preset / f"seed{seed}"


def read_run(path: Path) -> Optional[Dict[str, dict]]:
    """{"train": ..., "evaluate": ...} of one run, or None where it has not run yet.
    Current runs keep train.json / evaluate.json; archived ones dvclive's
    train/metrics.json / evaluate/metrics.json (and, before the run record, their wall
    time and hardware in train/metrics.json)."""
    found = {}
    for source in ("train", "evaluate"):
        for file in (path / f"{source}.json", path / source / "metrics.json"):
            if file.exists():
                found[source] = json.loads(file.read_text())
                break
        else:
            return None
    validation = path / "validation.json"  # the validate stage's scores, where it ran
    if validation.exists():
        found["validation"] = json.loads(validation.read_text())
    record = path / "train_run.json"
    if record.exists():
        found["train"].update({k: v for k, v in json.loads(record.read_text()).items()
                               if k in ("train_seconds", "hardware")})
    return found


def sample_std(values: List[float]) -> float:
    """Standard deviation with n - 1 in the denominator (0 for a single run)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def span(values: List[int]) -> str:
    """'450' when every seed ran as many epochs, '412-450' when early stopping varied it."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def row(preset: str, info: dict, runs: List[Dict[str, dict]], of_seeds: int, source: str) -> Dict:
    """One table row over `runs` (sample std, n - 1: with 3 seeds the population std
    would understate the spread by a fifth)."""
    train, evaluate = [r["train"] for r in runs], [r["evaluate"] for r in runs]
    acc = [e["cluster_accuracy"] for e in evaluate]
    nll = [-e["test_log_likelihood"] for e in evaluate]
    val = [r["validation"]["val_cluster_accuracy"] for r in runs if "validation" in r]
    return {
        "preset": preset, "kind": info["kind"], "recipe": info["description"], "source": source,
        "seeds": len(runs), "of_seeds": of_seeds,
        "cluster_accuracy_mean": float(np.mean(acc)), "cluster_accuracy_std": sample_std(acc),
        "nmi_mean": float(np.mean([e.get("nmi", float("nan")) for e in evaluate])),
        "val_accuracy_mean": float(np.mean(val)) if len(val) == len(runs) else float("nan"),
        "val_accuracy_std": sample_std(val) if len(val) == len(runs) else float("nan"),
        "nll_mean": float(np.mean(nll)), "nll_std": sample_std(nll),
        # each run's standard error over its test images, averaged: every seed is scored on
        # the same images, so this part of the error does not shrink with more seeds
        "nll_sem": float(np.mean([e.get("test_log_likelihood_sem", float("nan")) for e in evaluate])),
        "likelihood": info["likelihood"],
        "ll_images": evaluate[0].get("ll_images", ""), "iw_samples": evaluate[0].get("iw_samples", ""),
        "epochs": span([t["epochs"] for t in train]),
        # train.early_stopping: the epoch whose weights each seed kept, "" without it
        "best_epoch": span([t["best_epoch"] for t in train]) if all("best_epoch" in t for t in train) else "",
        "train_minutes": float(np.mean([t["train_seconds"] for t in train]) / 60),
        "hardware": "; ".join(dict.fromkeys(t.get("hardware", "unknown") for t in train)),
    }


def table_rows(index: dict, runs_dir: Path, archive_dir: Path) -> List[Dict]:
    """The current rows (every preset of the index with seeds; one with some seeds not
    run yet is marked "n=2 of 3", one with none is left out), then the historical ones."""
    rows = []
    for preset, info in index["presets"].items():
        if not info["seeds"]:
            continue
        runs = [r for r in (read_run(run_dir(runs_dir, preset, s)) for s in info["seeds"]) if r]
        if runs:
            rows.append(row(preset, info, runs, len(info["seeds"]), "current"))
    archive = Path(archive_dir) / "index.yaml"
    if not archive.exists():
        return rows
    for preset, info in read_yaml(archive).get("presets", {}).items():
        runs = []
        for seed in info["commits"]:
            run = read_run(run_dir(Path(archive_dir) / "runs", preset, seed))
            if run is None:
                raise DataError(f"{archive}: {preset} seed {seed} has no metrics under "
                                f"{archive_dir}/runs; restore them or drop the entry")
            runs.append(run)
        commits = ", ".join(dict.fromkeys(info["commits"].values()))
        rows.append(row(preset, info, runs, len(runs), f"historical @ {commits}"))
    return rows


def mean_std(mean: float, std: float, n: int, digits: int) -> str:
    """'0.9700 ± 0.0040'; one run has no spread to show, so just '0.9700'."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def val_text(r: Dict) -> str:
    """The validation accuracy, or "-" where a run has no validation scores."""
    if np.isnan(r.get("val_accuracy_mean", float("nan"))):
        return "-"
    return mean_std(r["val_accuracy_mean"], r["val_accuracy_std"], r["seeds"], 4)


def sem_text(r: Dict) -> str:
    return "-" if np.isnan(r["nll_sem"]) else f"{r['nll_sem']:.2f}"


def markdown(rows: List[Dict]) -> str:
    head = ("| preset | kind | recipe | cluster accuracy (mean ± std) | validation accuracy | NMI "
            "| NLL, nats (mean ± std) | NLL s.e. (test images) | likelihood | epochs "
            "| train min / seed | hardware | runs |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in rows:
        acc = mean_std(r["cluster_accuracy_mean"], r["cluster_accuracy_std"], r["seeds"], 4)
        nll = mean_std(r["nll_mean"], r["nll_std"], r["seeds"], 2)
        n = r["seeds"] if r["of_seeds"] == r["seeds"] else f"{r['seeds']} of {r['of_seeds']}"
        lines.append(f"| {r['preset']} | {r['kind']} | {r['recipe']} | {acc} (n={n}) | "
                     f"{val_text(r)} | {r['nmi_mean']:.4f} | {nll} | {sem_text(r)} | "
                     f"{r['likelihood']} ({r['ll_images']} images × "
                     f"{r['iw_samples']} samples) | {epochs_text(r)} | {r['train_minutes']:.1f} | "
                     f"{r['hardware']} | {r['source']} |")
    return "\n".join(lines) + "\n"


def epochs_text(r: Dict) -> str:
    """Epochs run, and the kept (best held-out) epoch where early stopping chose one."""
    return f"{r['epochs']} (best {r['best_epoch']})" if r.get("best_epoch") else f"{r['epochs']}"


def compact(rows: List[Dict]) -> str:
    """The current rows as the README shows them: accuracy, NMI, NLL and minutes a seed."""
    lines = ["| preset | kind | cluster accuracy | NMI | NLL, nats | train min / seed | seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = mean_std(r["cluster_accuracy_mean"], r["cluster_accuracy_std"], r["seeds"], 4)
        nll = mean_std(r["nll_mean"], r["nll_std"], r["seeds"], 2)
        n = r["seeds"] if r["of_seeds"] == r["seeds"] else f"{r['seeds']} of {r['of_seeds']}"
        lines.append(f"| `{r['preset']}` | {r['kind']} | {acc} | {r['nmi_mean']:.4f} | {nll} | "
                     f"{r['train_minutes']:.1f} | {n} |")
    return "\n".join(lines) + "\n"


def write_table(index: dict, runs_dir: Path, archive_dir: Path, md: Path, csv: Path) -> str:
    """experiments/table.md and table.csv; returns the markdown."""
    rows = table_rows(index, runs_dir, archive_dir)
    current = [r for r in rows if r["source"] == "current"]
    text = ("## Current: run by experiments/dvc.yaml on this commit's code\n\n" + markdown(current)
            + "\n## Historical: recorded on older code (the commit in the last column), never rerun\n\n"
            + markdown([r for r in rows if r["source"] != "current"]))
    write_rows_csv(csv, rows)
    write_text(md, text)
    return text
