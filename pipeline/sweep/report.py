"""A finished sweep -> results table, best-params overlay, metrics JSON and plots.

Input is `run_sweep`'s list of trials: {"trial", "config", "status", "error", "history"}.
Selection follows Tune's default scope: a trial's *final* (last-epoch) metric.

The report also checks the objectives against the labels, after the fact and for the
reader only (`objective_check`): does each label-free metric rank the trials as the
clustering accuracy does, and how well does the trial it would pick cluster?
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

import yaml
from matplotlib.ticker import MaxNLocator, NullFormatter

from pipeline.core.errors import TrainError
from pipeline.core.figures import plt
from pipeline.core.io import save_figure, write_json, write_text
from pipeline.core.schema import apply_overrides
from pipeline.params import Params
from pipeline.params.tune import LABEL_METRICS, TUNE_METRICS

LABEL_FREE = [m for m in TUNE_METRICS if m not in LABEL_METRICS]
NAN = float("nan")


def _best(values: List[float], mode: str) -> float:
    values = [v for v in values if v == v]  # drop NaN (no clusters for that kind)
    if not values:
        return float("nan")
    return max(values) if mode == "max" else min(values)


def results_rows(trials: List[dict], max_t: int) -> List[Dict]:
    """One row per trial: swept params, status, epochs, final_* and best_* of every metric."""
    rows = []
    for t in sorted(trials, key=lambda t: t["trial"]):
        hist = t["history"]
        row = {"trial": t["trial"], **t["config"], "status": t["status"],
               "epochs": len(hist) and hist[-1]["epoch"],
               "stopped_early": t["status"] == "stopped", "error": t["error"]}
        for m, mode in TUNE_METRICS.items():
            row[f"final_{m}"] = hist[-1].get(m, NAN) if hist else NAN
            row[f"best_{m}"] = _best([h.get(m, NAN) for h in hist], mode)
        row["train_seconds"] = sum(h["seconds"] for h in hist)
        # what a trial pays before its first step, and its first epoch (docs/sweeps.md)
        row["setup_seconds"] = sum(_num(h.get("setup_seconds")) for h in hist)
        row["first_epoch_seconds"] = hist[0]["seconds"] if hist else NAN
        rows.append(row)
    return rows


def _num(v) -> float:
    return 0.0 if v is None or v != v else float(v)


def _spearman(pairs: List[tuple]) -> Optional[float]:
    """Rank correlation of (objective, accuracy) pairs, NaNs dropped; None under 3 pairs
    or when either side is constant."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in pairs if a == a and b == b]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None
    return round(float(spearmanr(*zip(*pairs)).statistic), 3)


def objective_check(trials: List[dict], rows: List[Dict]) -> Dict:
    """Per label-free metric m, with the sign of m flipped where lower is better so that
    a positive number means "better m, better clustering":
    - spearman_epoch_1: over every trial that trained an epoch (no scheduler bias: all
      trials are compared after the same training);
    - spearman_final: over the trials that ran every epoch;
    - picked_accuracy: the final accuracy of the trial that m would pick (final scope).
    Labels are read here for the report only; no choice in the sweep depends on it."""
    ok = [t for t in trials if t["status"] != "failed" and t["history"]]
    done = [r for r in rows if r["status"] == "finished"]
    acc = "cluster_accuracy"
    out = {}
    for m in LABEL_FREE:
        sign = 1 if TUNE_METRICS[m] == "max" else -1
        first = [(sign * t["history"][0].get(m, NAN), t["history"][0].get(acc, NAN)) for t in ok]
        final = [(sign * r[f"final_{m}"], r[f"final_{acc}"]) for r in done]
        pick = best_row(rows, m)
        out[m] = {"spearman_epoch_1": _spearman(first), "spearman_final": _spearman(final),
                  "picked_accuracy": pick[f"final_{acc}"] if pick else None}
    return out


def best_row(rows: List[Dict], metric: str) -> Optional[Dict]:
    mode = TUNE_METRICS[metric]
    ok = [r for r in rows if r["status"] != "failed" and r[f"final_{metric}"] == r[f"final_{metric}"]]
    if not ok:
        return None
    return (max if mode == "max" else min)(ok, key=lambda r: r[f"final_{metric}"])


def best_params_yaml(best: Dict, swept: List[str], metric: str) -> str:
    """A params.yaml overlay (same nesting) with the winning values, plus the -S flags."""
    nested = apply_overrides({}, {key: best[key].item() if hasattr(best[key], "item") else best[key]
                                  for key in swept})
    flags = " ".join(f"-S {k}={best[k]}" for k in swept)
    head = (f"# best trial {best['trial']}: final {metric} {best[f'final_{metric}']:.6g} "
            f"after {best['epochs']} epochs\n# train and evaluate it: dvc exp run {flags}\n")
    return head + yaml.safe_dump(nested, sort_keys=True)


def write_table(rows: List[Dict], csv: Path) -> None:
    import pandas as pd

    write_text(csv, pd.DataFrame(rows).to_csv(index=False, lineterminator="\n"))


def write_plots(trials: List[dict], rows: List[Dict], swept: List[str], metric: str,
                out_dir: Path) -> None:
    """trials.csv (one row per ended trial, dots -> underscores so Vega reads the fields),
    curves.csv (every trial's per-epoch metrics, long format), and two PNGs."""
    import pandas as pd

    ok = [r for r in rows if r["status"] != "failed"]
    cols = ["trial", *swept, "status", "epochs", f"final_{metric}", f"best_{metric}"]
    df = pd.DataFrame([{c: r[c] for c in cols} for r in ok], columns=cols)
    df.columns = [c.replace(".", "_") for c in cols]
    write_text(out_dir / "trials.csv", df.to_csv(index=False, lineterminator="\n"))
    curve_rows = [{"trial": t["trial"], "epoch": h["epoch"], **{m: h[m] for m in TUNE_METRICS}}
                  for t in trials for h in t["history"]]
    write_text(out_dir / "curves.csv", pd.DataFrame(
        curve_rows, columns=["trial", "epoch", *TUNE_METRICS]).to_csv(index=False, lineterminator="\n"))

    n = max(1, len(swept))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, key in zip(axes[0], swept):
        for status, marker in (("finished", "o"), ("stopped", "x")):
            sel = [r for r in ok if r["status"] == status]
            ax.scatter([r[key] for r in sel], [r[f"final_{metric}"] for r in sel], marker=marker,
                       label=status)
        values = [r[key] for r in ok if isinstance(r[key], (int, float))]
        if values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide
        ax.set_xlabel(key)
    axes[0][0].set_ylabel(f"final {metric}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{metric} vs swept params (x: stopped early)", fontsize=10)
    _save(fig, out_dir / "metric_vs_params.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for t in trials:
        if t["history"]:
            ax.plot([h["epoch"] for h in t["history"]], [h[metric] for h in t["history"]],
                    marker=".", label=t["trial"].rsplit("_", 1)[-1])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves of all trials ({metric})", fontsize=10)
    if len(trials) <= 12:
        ax.legend(fontsize=6, ncol=2)
    _save(fig, out_dir / "learning_curves.png")

    # each label-free objective against the accuracy it is meant to predict (report only)
    fig, axes = plt.subplots(1, len(LABEL_FREE), figsize=(3.6 * len(LABEL_FREE), 3.2), squeeze=False)
    for ax, m in zip(axes[0], LABEL_FREE):
        for label, marker, pts in (
                ("epoch 1, every trial", ".", [t["history"][0] for t in trials if t["history"]]),
                ("final, full budget", "o", [t["history"][-1] for t in trials if t["status"] == "finished"])):
            ax.scatter([p.get(m, NAN) for p in pts], [p.get("cluster_accuracy", NAN) for p in pts],
                       marker=marker, label=label, alpha=0.7)
        ax.set_xlabel(m + (" (chosen)" if m == metric else ""))
    axes[0][0].set_ylabel("held-out cluster accuracy (report only)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("label-free objectives vs clustering accuracy, one dot a trial", fontsize=10)
    _save(fig, out_dir / "objective_vs_accuracy.png")


def _save(fig, path: Path) -> None:
    save_figure(fig, path)
    plt.close(fig)


def sweep_metrics(rows: List[Dict], best: Optional[Dict], params: Params, seconds: float,
                  check: Optional[Dict] = None) -> Dict:
    """sweep/metrics.json: numbers only, so `dvc metrics diff` compares sweeps."""
    metric = params.tune.metric
    hours = seconds / 3600
    accuracies = sorted(r["final_cluster_accuracy"] for r in rows
                        if r["status"] != "failed" and r["final_cluster_accuracy"] == r["final_cluster_accuracy"])
    return {
        f"best_{metric}": best[f"final_{metric}"] if best else None,
        "best": {k: best[k] for k in params.tune.space} if best else {},
        "trials": len(rows),
        "finished": sum(r["status"] == "finished" for r in rows),
        "stopped_early": sum(r["status"] == "stopped" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "epochs_trained": sum(r["epochs"] for r in rows),
        "sweep_seconds": round(seconds, 1),
        "trials_per_hour": round(len(rows) / hours, 1) if hours > 0 and not math.isinf(hours) else None,
        "setup_seconds_median": _median([r["setup_seconds"] for r in rows if r["epochs"]]),
        # report only: the labels, read after the sweep (objective_check)
        "accuracy_max": accuracies[-1] if accuracies else None,
        "accuracy_median": _median(accuracies),
        "objectives": check or {},
    }


def _median(values: List[float]) -> Optional[float]:
    values = sorted(v for v in values if v == v)
    if not values:
        return None
    mid = len(values) // 2
    return round(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2, 4)


def write_report(trials: List[dict], params: Params, seconds: float, table_dir: Path,
                 plots_dir: Path, metrics_path: Path) -> Dict:
    """Write every output of the tune stage; return the best row (TrainError if none)."""
    max_t = params.tune.epochs or params.train.epochs
    swept = list(params.tune.space)
    rows = results_rows(trials, max_t)
    best = best_row(rows, params.tune.metric)
    if best is None:
        raise TrainError(f"all {len(rows)} trials failed, e.g. {rows[0]['error'] if rows else '?'}; "
                         f"see the FAILED lines above")
    write_table(rows, table_dir / "table.csv")
    write_plots(trials, rows, swept, params.tune.metric, plots_dir)
    write_text(table_dir / "best_params.yaml", best_params_yaml(best, swept, params.tune.metric))
    write_json(metrics_path, sweep_metrics(rows, best, params, seconds, objective_check(trials, rows)))
    return best
