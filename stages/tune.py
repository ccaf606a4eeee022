"""tune: Parquet shards -> Ray Tune sweep over tune.space -> results table, best params, plots."""
import json
import time
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--neighbours", help="the neighbours stage's folder (else computed if needed)")
    p.add_argument("--table-dir", required=True, help="writes table.csv, best_params.yaml")
    p.add_argument("--plots", required=True, help="directory for trials.csv, curves.csv, PNGs")
    p.add_argument("--metrics", required=True, help="sweep summary JSON (a DVC metric)")
    args = p.parse_args()
    params = cli.load(args)

    from pipeline.sweep.report import write_report
    from pipeline.sweep.run import run_sweep

    t0 = time.perf_counter()
    trials = run_sweep(params, Path(args.shards), log=cli.log,
                       neighbours=args.neighbours and Path(args.neighbours))
    best = write_report(trials, params, time.perf_counter() - t0, Path(args.table_dir),
                        Path(args.plots), Path(args.metrics))
    metric = params.tune.metric
    cli.log(f"tune: best trial {best['trial']} final {metric} {best[f'final_{metric}']:.4g} with "
            + " ".join(f"{k}={best[k]}" for k in params.tune.space)
            + f"; wrote {args.table_dir}/table.csv, best_params.yaml, {args.plots}")
    for name, c in json.loads(Path(args.metrics).read_text())["objectives"].items():
        cli.log(f"tune: report only (labels): {name} vs cluster accuracy, rank correlation "
                f"{c['spearman_epoch_1']} after epoch 1, {c['spearman_final']} at the end; "
                f"its pick clusters at {c['picked_accuracy']}")


if __name__ == "__main__":
    cli.run(main)
