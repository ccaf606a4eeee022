"""results: every preset's runs over seeds -> results/table.{md,csv} and README's table."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import cli  # noqa: E402
from pipeline.io import write_text  # noqa: E402
from pipeline.plots import write_rows_csv  # noqa: E402
from pipeline.results import markdown, results_rows, write_readme_block  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--runs", required=True, help="holds <preset>/seed<S>/{train,evaluate}.json")
    p.add_argument("--markdown", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--readme", help="also replace the table between the markers in this file")
    args = p.parse_args()
    params = cli.load(args)
    rows = results_rows(Path(args.runs), params)
    table = markdown(rows)
    write_rows_csv(Path(args.csv), rows)
    write_text(args.markdown, table)
    if args.readme:
        write_text(args.readme, write_readme_block(Path(args.readme), table))
    cli.log(table)


if __name__ == "__main__":
    cli.run(main)
