"""Run logs: dvclive always, TensorBoard on request (train.tensorboard).

dvclive writes the layout `dvc exp show` and `dvc plots show` read, so the project writes
no metrics or curve files of its own:

    <dir>/metrics.json              the summary: `dvc metrics` / `dvc exp show` (kept in git)
    <dir>/plots/metrics/<name>.tsv  one row per step (here: per epoch)   } the DVC cache
    <dir>/plots/images/...          PNGs, a folder of <step>.png a slider } (`dvc push`)
    <dir>/plots/{sklearn,custom}/   confusion matrix, scatter data        }

Each stage's dvc.yaml declares <dir>/metrics.json and <dir>/plots. dvclive is used as a
writer only: no dvc.yaml of its own (the stages declare theirs), no experiment saving
(`dvc exp run` does that), no report."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Optional


def open_live(path: Path | str):
    """A dvclive logger writing into `path` (emptied of dvclive's files first)."""
    from dvclive import Live

    return Live(str(path), save_dvc_exp=False, dvcyaml=False, report=None)


def log_epochs(live, rows: Iterable[Dict], tensorboard=None, prefix: str = "train") -> int:
    """One dvclive step per row ({"epoch": e, name: value, ...}, step = epoch) and the
    summary rewritten, each mirrored to a TensorBoard writer if given (either may be
    None). Returns the last epoch logged (0 for no rows)."""
    last = 0
    for row in rows:
        last = int(row["epoch"])
        if live is not None:
            live.step = last
        for name, value in row.items():
            if name == "epoch":
                continue
            if live is not None:
                live.log_metric(name, float(value))
            if tensorboard is not None:
                tensorboard.add_scalar(f"{prefix}/{name}", float(value), last)
    if live is not None:
        live.make_summary()
    if tensorboard is not None:
        tensorboard.flush()
    return last


def tensorboard_writer(logdir: Optional[str]):
    """A tensorboardX SummaryWriter on `logdir` (a folder, or s3:// as tensorboardX
    allows), or None when TensorBoard logs are off. tensorboardX comes with ray[tune]."""
    if not logdir:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(logdir=logdir, flush_secs=10)


def move_summary(live_dir: Path, metrics: Optional[Path]) -> None:
    """Move dvclive's summary (live_dir/metrics.json) to `metrics`, if given: an experiment
    run keeps its metrics in git and its dvclive folder (plots) in the DVC cache, and DVC
    outputs cannot nest."""
    if metrics is None:
        return
    Path(metrics).parent.mkdir(parents=True, exist_ok=True)
    os.replace(Path(live_dir) / "metrics.json", metrics)  # atomic on one filesystem
