"""train: Parquet shards -> model file, and a dvclive folder of the per-epoch losses,
per-epoch component samples and the final training metrics."""
import sys
from pathlib import Path

# The pipeline/ beside this script, not an installed copy: a `dvc exp run --queue` run
# executes in a copy of the project, whose code is what DVC hashed for it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import cli  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True, help="model file to write")
    p.add_argument("--live", required=True,
                   help="dvclive folder to write: metrics.json and plots/ (curves, pictures)")
    p.add_argument("--record", required=True,
                   help="the run record (JSON): wall time, throughput, the environment")
    args = p.parse_args()
    params = cli.load(args)  # validated before any Ray work starts

    from pipeline.training.driver import fit, write_outputs

    state = fit(params, Path(args.shards), log=cli.log, live_dir=Path(args.live))
    write_outputs(state, params, Path(args.model), Path(args.live), Path(args.record), log=cli.log)


if __name__ == "__main__":
    cli.run(main)
