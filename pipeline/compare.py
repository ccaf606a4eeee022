"""The side-by-side table of the compare stages: one row per model kind."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from pipeline.data import DataError

# (column, source file, key, format) in table order.
COLUMNS = [
    ("kind", None, None, "{}"),
    ("cluster_accuracy", "evaluate", "cluster_accuracy", "{:.4f}"),
    ("nmi", "evaluate", "nmi", "{:.4f}"),
    ("ari", "evaluate", "ari", "{:.4f}"),
    ("test_log_likelihood", "evaluate", "test_log_likelihood", "{:.2f}"),
    ("ll_sem", "evaluate", "test_log_likelihood_sem", "{:.2f}"),
    ("epochs", "train", "epochs", "{}"),
    ("train_seconds", "train", "train_seconds", "{:.0f}"),
    ("parameters", "train", "parameters", "{:,}"),
]


def read_run_metrics(run_dir: Path, how: str) -> Dict[str, dict]:
    """{"train": ..., "evaluate": ...} from one run's train.json and evaluate.json; a missing
    file is a DataError that says `how` to make it."""
    found = {}
    for source in ("train", "evaluate"):
        path = Path(run_dir) / f"{source}.json"
        if not path.exists():
            raise DataError(f"{path} is missing; {how}")
        found[source] = json.loads(path.read_text())
    return found


def comparison_rows(metrics_dir: Path, kinds: Sequence[str]) -> List[Dict]:
    """Read metrics_dir/<kind>/{train,evaluate}.json for every kind into table rows."""
    rows = []
    for kind in kinds:
        found = read_run_metrics(Path(metrics_dir) / kind, "run `dvc repro compare` (it trains "
                                 "and evaluates every kind in compare.kinds first)")
        rows.append({col: kind if src is None else found[src][key] for col, src, key, _ in COLUMNS})
    return rows


def markdown_table(rows: List[Dict], note: str = "") -> str:
    fmt = {col: f for col, _, _, f in COLUMNS}
    lines = ["| " + " | ".join(fmt) + " |", "|" + "|".join("---" for _ in fmt) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt[c].format(row[c]) for c in fmt) + " |")
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")
