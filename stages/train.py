"""train: Parquet shards -> model file, per-epoch curves and final training metrics."""
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True, help="model file to write")
    p.add_argument("--curves", required=True, help="per-epoch CSV (a DVC plot)")
    p.add_argument("--metrics", required=True, help="final training metrics (JSON)")
    p.add_argument("--snapshots", required=True, help="per-epoch component samples (PNG)")
    p.add_argument("--record", required=True,
                   help="the run record (JSON): wall time, throughput, the environment")
    args = p.parse_args()
    params = cli.load(args)  # validated before any Ray work starts

    from pipeline.training.driver import fit, write_outputs

    state = fit(params, Path(args.shards), log=cli.log)
    write_outputs(state, params, Path(args.model), Path(args.curves), Path(args.metrics),
                  Path(args.snapshots), Path(args.record), log=cli.log)


if __name__ == "__main__":
    cli.run(main)
