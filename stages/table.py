"""table: every preset's runs over seeds (one experiment set) -> <set>/table.{md,csv}."""
import sys
from pathlib import Path

# The pipeline/ beside this script, not an installed copy: a `dvc exp run --queue` run
# executes in a copy of the project, whose code is what DVC hashed for it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import cli  # noqa: E402


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
