"""train: Parquet shards -> model file, and a dvclive folder of the per-epoch losses,
per-epoch component samples and the final training metrics."""
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--neighbours", help="the neighbours stage's folder (else computed if needed)")
    p.add_argument("--model", required=True, help="model file to write")
    p.add_argument("--live", required=True,
                   help="dvclive folder to write: metrics.json and plots/ (curves, pictures)")
    p.add_argument("--metrics", help="move dvclive's metrics.json here (default: stays in --live)")
    p.add_argument("--record", required=True,
                   help="the run record (JSON): wall time, throughput, the environment")
    args = p.parse_args()
    params = cli.load(args)  # validated before any Ray work starts

    from pipeline.core.tracking import move_summary
    from pipeline.training.driver import fit, write_outputs

    state = fit(params, Path(args.shards), log=cli.log, live_dir=Path(args.live),
                neighbours=args.neighbours and Path(args.neighbours))
    write_outputs(state, params, Path(args.model), Path(args.live), Path(args.record), log=cli.log)
    move_summary(Path(args.live), args.metrics and Path(args.metrics))


if __name__ == "__main__":
    cli.run(main)
