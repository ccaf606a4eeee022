"""table: every preset's runs over seeds (one experiment set) -> <set>/table.{md,csv}."""
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--set", required=True, choices=("compare", "results"))
    p.add_argument("--runs", required=True, help="holds <preset>/seed<S>/{train,evaluate}.json")
    p.add_argument("--markdown", required=True)
    p.add_argument("--csv", required=True)
    args = p.parse_args()
    params = cli.load(args)

    from pipeline.experiments.table import write_table

    cli.log(write_table(params, args.set, Path(args.runs), Path(args.markdown), Path(args.csv)))


if __name__ == "__main__":
    cli.run(main)
