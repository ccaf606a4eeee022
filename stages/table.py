"""table: every preset's runs (experiments/runs) and the archived ones -> one table."""
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--runs", required=True, help="holds <preset>/seed<S>/{train,evaluate}.json")
    p.add_argument("--archive", required=True, help="the historical runs and their index.yaml")
    p.add_argument("--markdown", required=True)
    p.add_argument("--csv", required=True)

    p.add_argument("--index", default="experiments/index.yaml", help="the presets and their runs")
    args = p.parse_args()

    from pipeline.experiments.index import read_index
    from pipeline.experiments.table import write_table

    # read_index: a preset edited after the index was written is a one-line error here too,
    # since the runs no longer depend on the preset files themselves (only on the index)
    cli.log(write_table(read_index(Path(args.index)), Path(args.runs), Path(args.archive),
                        Path(args.markdown), Path(args.csv)))


if __name__ == "__main__":
    cli.run(main)
