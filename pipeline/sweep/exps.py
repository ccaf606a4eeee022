"""Every trial of a finished sweep as a DVC experiment: `dvc exp show` lists them beside the
project's other runs, and `dvc exp apply <trial>` writes that trial's values into the
params file the sweep read (params.yaml, or the preset's overrides).

    dvc repro sweep/dvc.yaml                          # the sweeps
    python -m pipeline.sweep.exps                     # tune's trials: sweep-<trial id>
    python -m pipeline.sweep.exps --sweep sweep/gmm_vae --preset sweep_gmm_vae
    dvc exp show --only-changed                       # one row a trial
    dvc exp apply sweep-00007 && dvc repro            # train the one you chose fully

Why after the stage, not inside it: `dvc repro` holds the repository's lock while a stage
runs, so no experiment can be saved from there (dvclive skips `save_dvc_exp` inside a
pipeline for that reason). The trials' numbers come from the stage's outputs (table.csv,
plots/curves.csv), written by the Tune driver: a sweep whose trials ran on other nodes
of a Ray cluster comes back the same way.

Each experiment is what a training script with dvclive would leave: the trial's values go
into the params file, dvclive logs its per-epoch held-out metrics step by step (`dvc
plots` draws them), its final row is the summary, its status and error are params; then
`dvc exp save` keeps it, committing no stage. Not dvclive's own `save_dvc_exp`: that one
commits every stage (and fails where another stage's outputs are not pulled), and turns
a failure into a warning. The workspace is put back afterwards.
"""
from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path
from typing import Dict, List, Optional

from pipeline.core.errors import ConfigError
from pipeline.params.tune import TUNE_METRICS

TRIAL_DIR = Path("sweep/trial")  # dvclive's folder inside each trial's experiment


def read_trials(sweep_dir: Path) -> List[Dict]:
    """The sweep's trials, from its table (one row each) and curves (one row an epoch)."""
    import pandas as pd

    table, curves = sweep_dir / "table.csv", sweep_dir / "plots" / "curves.csv"
    for path in (table, curves):
        if not path.exists():
            raise ConfigError(f"{path} not found; run the sweep first (dvc repro sweep/dvc.yaml)")
    rows = pd.read_csv(table, keep_default_na=False, na_values=[""]).to_dict("records")
    by_trial = pd.read_csv(curves).groupby("trial")
    epochs = {t: g.sort_values("epoch").to_dict("records") for t, g in by_trial}
    for row in rows:
        row["history"] = epochs.get(row["trial"], [])
    return rows


def swept_keys(row: Dict) -> List[str]:
    """The table's swept columns: the dotted model.*/train.* keys."""
    return [k for k in row if k.startswith(("model.", "train."))]


def plain(value):
    """numpy and pandas scalars as YAML-friendly Python values."""
    return value.item() if hasattr(value, "item") else value


def set_values(params_file: Path, values: Dict[str, object], preset: bool) -> None:
    """Write a trial's dotted values into the params file, keeping its comments (DVC's own
    round-trip YAML editor, the one `dvc exp run -S` uses)."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(params_file) as data:
        if preset:  # a preset's flat `overrides:` mapping of dotted keys
            data.setdefault("overrides", {}).update(values)
            return
        for dotted, value in values.items():
            node, *path, leaf = [data, *dotted.split(".")]
            for key in path:
                node = node.setdefault(key, {})
            node[leaf] = value


def log_trial(row: Dict, values: Dict[str, object]) -> None:
    """The trial's dvclive folder: params (its values, status, error), one step an epoch of
    the held-out metrics, the final row as the summary, and the dvc.yaml declaring them."""
    from dvclive import Live

    error = row.get("error")
    with Live(dir=str(TRIAL_DIR), dvcyaml=str(TRIAL_DIR / "dvc.yaml"), save_dvc_exp=False) as live:
        live.log_params({"trial": row["trial"], "status": row["status"],
                         "error": "" if error is None or error != error else str(error),
                         **values})
        for epoch in row["history"]:
            for metric in TUNE_METRICS:
                value = epoch.get(metric)
                if value is not None and not math.isnan(value):
                    live.log_metric(metric, float(value))
            live.next_step()


def save_sweep(sweep_dir: Path, preset: Optional[str] = None, prefix: Optional[str] = None,
               log=print) -> List[str]:
    """Save every trial of the sweep in `sweep_dir` as an experiment; return their names."""
    import logging

    logging.getLogger("dvclive").setLevel(logging.WARNING)  # a line a trial: ours below
    params_file = Path(f"params/{preset}.yaml") if preset else Path("params.yaml")
    if not params_file.exists():
        raise ConfigError(f"{params_file} not found; run from the project root, or fix --preset")
    from dvc.repo import Repo

    trials = read_trials(sweep_dir)
    prefix = prefix or (preset or "sweep")
    original = params_file.read_bytes()
    names = []
    try:
        # `dvc exp save` commits the stages of its targets first: target the trial's own
        # dvc.yaml, which declares metrics and no stage, so that no stage is committed:
        # not every stage (another stage's outputs may not be pulled here) and not the
        # sweep's (its dvc.lock would record the trial's values as the sweep's params).
        targets = [str(TRIAL_DIR / "dvc.yaml")]
        for row in trials:
            name = f"{prefix}-{str(row['trial']).rsplit('_', 1)[-1]}"
            values = {k: plain(row[k]) for k in swept_keys(row)}
            set_values(params_file, values, preset is not None)
            log_trial(row, values)
            with Repo() as repo:  # a fresh Repo a save: it caches the index it read
                repo.experiments.save(targets=targets, name=name, force=True,
                                      include_untracked=[str(TRIAL_DIR)],
                                      message=f"sweep trial {row['trial']} ({row['status']}) of {sweep_dir}")
            params_file.write_bytes(original)  # the next trial starts from the same file
            names.append(name)
            log(f"exps: {name}: {row['status']}, " + " ".join(f"{k}={v}" for k, v in values.items()))
    finally:
        params_file.write_bytes(original)
        shutil.rmtree(TRIAL_DIR, ignore_errors=True)
    log(f"exps: {len(names)} trials saved as DVC experiments; dvc exp show --only-changed "
        f"lists them, dvc exp apply NAME takes one's params")
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="sweep", help="the sweep's --table-dir (default: sweep)")
    p.add_argument("--preset", help="the sweep ran with --preset NAME: its trials' values go "
                                    "into params/NAME.yaml (default: params.yaml)")
    p.add_argument("--prefix", help="experiment names are PREFIX-<trial> (default: sweep or "
                                    "the preset's name)")
    args = p.parse_args()
    save_sweep(Path(args.sweep), args.preset, args.prefix)


if __name__ == "__main__":
    from pipeline import cli

    cli.run(main)
