"""evaluate: model + test shards -> clustering and log-likelihood metrics, and pictures."""
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--live", required=True,
                   help="dvclive folder to write: metrics.json and plots/ (pictures, plot data)")
    p.add_argument("--metrics", help="move dvclive's metrics.json here (default: stays in --live)")
    args = p.parse_args()
    cfg = cli.load(args).evaluate

    from pipeline.core.tracking import move_summary
    from pipeline.evaluation.run import evaluate_stage

    m = evaluate_stage(cfg, Path(args.shards), Path(args.model), Path(args.live), log=cli.log)
    move_summary(Path(args.live), args.metrics and Path(args.metrics))
    cli.log(f"evaluate: cluster_accuracy {m['cluster_accuracy']:.4f}  nmi {m['nmi']:.4f}  "
            f"ari {m['ari']:.4f}  test_log_likelihood {m['test_log_likelihood']:.2f} nats")


if __name__ == "__main__":
    cli.run(main)
