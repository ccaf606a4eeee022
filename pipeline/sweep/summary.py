"""What the committed sweeps found, as the markdown block docs/sweeps.md quotes.

    python -m pipeline.sweep.summary docs/sweeps.md   # rewrite the block from sweep/

The block sits between `<!-- sweep-summary -->` and `<!-- /sweep-summary -->`; a test
checks that it equals what this module makes of the committed sweep outputs, so every
number in it comes from a stage, none is typed in.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import List

from pipeline.core.errors import ConfigError
from pipeline.core.io import write_text
from pipeline.sweep.report import best_row

SWEEPS = {"sweep": "tune: the main recipe (params.yaml)",
          "sweep/gmm_vae": "tune_gmm_vae: gmm_vae's components (params/sweep_gmm_vae.yaml)"}
START, END = "<!-- sweep-summary -->", "<!-- /sweep-summary -->"


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def one_sweep(sweep_dir: Path, title: str) -> List[str]:
    import pandas as pd

    m = json.loads((sweep_dir / "metrics.json").read_text())
    table = pd.read_csv(sweep_dir / "table.csv")
    metric = next(k[len("best_"):] for k in m if k.startswith("best_") and k != "best")
    best = best_row(table.to_dict("records"), metric)  # the stage's own choice, from its table
    swept = [c for c in table.columns if c.startswith(("model.", "train."))]
    lines = [f"**{title}**: {m['trials']} trials ({m['finished']} finished, {m['stopped_early']} "
             f"stopped early, {m['failed']} failed), {m['epochs_trained']} epochs in "
             f"{m['sweep_seconds'] / 60:.1f} min: {m['trials_per_hour']} trials an hour; median "
             f"setup before a trial's first step {_num(m.get('setup_seconds_median'), '.2f')} s.",
             "",
             f"- Best by `{metric}` (final {best[f'final_{metric}']:.4g}, {int(best['epochs'])} epochs): "
             + ", ".join(f"`{k}` = {best[k]:.4g}" if isinstance(best[k], float) else f"`{k}` = {best[k]}"
                         for k in swept) + f"; its held-out accuracy {best['final_cluster_accuracy']:.3f}.",
             f"- Held-out accuracy over the trials (report only): best {_num(m['accuracy_max'])}, "
             f"median {_num(m['accuracy_median'])}.",
             "",
             "| label-free objective | rank corr. with accuracy, epoch 1 (all trials) | "
             "rank corr., full budget (finished) | accuracy of its pick |",
             "|---|---|---|---|"]
    for name, c in m["objectives"].items():
        chosen = " (the sweep's)" if name == metric else ""
        lines.append(f"| `{name}`{chosen} | {_num(c['spearman_epoch_1'], '.2f')} | "
                     f"{_num(c['spearman_final'], '.2f')} | {_num(c['picked_accuracy'])} |")
    return lines + [""]


def summary(root: Path = Path(".")) -> str:
    out: List[str] = []
    for sweep_dir, title in SWEEPS.items():
        if (root / sweep_dir / "metrics.json").exists():
            out += one_sweep(root / sweep_dir, title)
    if not out:
        raise ConfigError("no sweep outputs under sweep/; run dvc repro sweep/dvc.yaml first")
    return "\n".join(out).rstrip() + "\n"


def block(text: str) -> str:
    """The block's current body in a document."""
    m = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.S)
    if not m:
        raise ConfigError(f"no {START} ... {END} block in the document; add one")
    return m.group(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("doc", type=Path, help="the markdown file holding the block")
    args = p.parse_args()
    text = args.doc.read_text()
    write_text(args.doc, text.replace(START + "\n" + block(text) + END, START + "\n" + summary() + END))


if __name__ == "__main__":
    from pipeline import cli

    cli.run(main)
