"""compare: per-kind metrics from the compare_train/compare_evaluate stages -> one table."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import cli  # noqa: E402
from pipeline.compare import comparison_rows, markdown_table  # noqa: E402
from pipeline.io import write_text  # noqa: E402
from pipeline.plots import write_rows_csv  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--metrics-dir", required=True, help="holds <kind>/train.json, <kind>/evaluate.json")
    p.add_argument("--markdown", required=True)
    p.add_argument("--csv", required=True)
    args = p.parse_args()
    params = cli.load(args)
    rows = comparison_rows(Path(args.metrics_dir), params.compare.kinds)
    over = params.compare.overrides
    note = ("Every kind ran with params.yaml" + (f" plus {over}" if over else "") +
            "; log-likelihoods are nats per test image (higher is better).")
    write_rows_csv(Path(args.csv), rows)
    write_text(args.markdown, markdown_table(rows, note))
    cli.log(markdown_table(rows))


if __name__ == "__main__":
    cli.run(main)
