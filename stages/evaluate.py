"""evaluate: model + test shards -> clustering and log-likelihood metrics, and pictures."""
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--metrics", required=True, help="metrics JSON to write")
    p.add_argument("--plots", required=True, help="directory for the evaluation pictures")
    args = p.parse_args()
    cfg = cli.load(args).evaluate

    from pipeline.evaluation.run import evaluate_stage

    m = evaluate_stage(cfg, Path(args.shards), Path(args.model), Path(args.metrics),
                       Path(args.plots), log=cli.log)
    cli.log(f"evaluate: cluster_accuracy {m['cluster_accuracy']:.4f}  nmi {m['nmi']:.4f}  "
            f"ari {m['ari']:.4f}  test_log_likelihood {m['test_log_likelihood']:.2f} nats")


if __name__ == "__main__":
    cli.run(main)
