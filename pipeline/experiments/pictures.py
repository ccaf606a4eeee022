"""One picture of the current rows, side by side: each preset's random samples from its
first seed's run (where it has run), titled with that run's own clustering accuracy and NLL.

    python -m pipeline.experiments.pictures --out docs/images/comparison_samples.png

Reads the runs' cached evaluate pictures (experiments/cache/, `dvc pull
experiments/dvc.yaml` where they are not here) and their metrics (experiments/runs/).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core.errors import DataError
from pipeline.core.io import save_figure
from pipeline.experiments.table import read_yaml

PICTURE = "evaluate/plots/images/samples.png"


def comparison_figure(index: dict, runs_dir: Path, cache_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    shown = [(name, info["seeds"][0]) for name, info in index["presets"].items() if info["seeds"]
             and (Path(runs_dir) / name / f"seed{info['seeds'][0]}" / "evaluate.json").exists()]
    if not shown:
        raise DataError(f"no preset's first seed has run under {runs_dir}; "
                        f"run `dvc repro experiments/dvc.yaml` first")
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.1), squeeze=False)
    for ax, (name, seed) in zip(axes[0], shown):
        picture = Path(cache_dir) / name / f"seed{seed}" / PICTURE
        metrics = Path(runs_dir) / name / f"seed{seed}" / "evaluate.json"
        if not picture.exists():
            raise DataError(f"{picture} is missing; `dvc pull experiments/dvc.yaml:run@{name}-{seed}`")
        m = json.loads(metrics.read_text())
        ax.imshow(mpimg.imread(picture), cmap="gray")
        ax.set_title(f"{name}\naccuracy {m['cluster_accuracy']:.3f}, "
                     f"{-m['test_log_likelihood']:.1f} nats", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default="experiments/index.yaml")
    p.add_argument("--runs", default="experiments/runs")
    p.add_argument("--cache", default="experiments/cache")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    try:
        fig = comparison_figure(read_yaml(Path(args.index)), Path(args.runs), Path(args.cache))
    except DataError as e:
        sys.exit(f"error: {e}")
    save_figure(fig, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
