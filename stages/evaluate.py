"""evaluate: model + test shards -> clustering and log-likelihood metrics, and pictures."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import cli  # noqa: E402
from pipeline.io import write_json  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--metrics", required=True, help="metrics JSON to write")
    p.add_argument("--plots", required=True, help="directory for the evaluation pictures")
    args = p.parse_args()
    cfg = cli.load(args).evaluate

    from pipeline.data import load_split
    from pipeline.evaluate import evaluate_model
    from pipeline.models import load_model
    from pipeline.plots import write_evaluation_plots

    model = load_model(args.model)
    test = load_split(Path(args.shards), "test", with_labels=True)
    result = evaluate_model(model, test.pixels, test.labels, cfg, log=cli.log)
    write_evaluation_plots(Path(args.plots), model, test.labels, result, cfg.seed)
    write_json(args.metrics, result["metrics"])
    m = result["metrics"]
    cli.log(f"evaluate: cluster_accuracy {m['cluster_accuracy']:.4f}  nmi {m['nmi']:.4f}  "
            f"ari {m['ari']:.4f}  test_log_likelihood {m['test_log_likelihood']:.2f} nats")


if __name__ == "__main__":
    cli.run(main)
