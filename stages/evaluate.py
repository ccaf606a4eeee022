"""evaluate: model + test shards -> clustering and log-likelihood metrics, and pictures."""
import sys
from pathlib import Path

# The pipeline/ beside this script, not an installed copy: a `dvc exp run --queue` run
# executes in a copy of the project, whose code is what DVC hashed for it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline import cli  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--live", required=True,
                   help="dvclive folder to write: metrics.json and plots/ (pictures, plot data)")
    args = p.parse_args()
    cfg = cli.load(args).evaluate

    from pipeline.evaluation.run import evaluate_stage

    m = evaluate_stage(cfg, Path(args.shards), Path(args.model), Path(args.live), log=cli.log)
    cli.log(f"evaluate: cluster_accuracy {m['cluster_accuracy']:.4f}  nmi {m['nmi']:.4f}  "
            f"ari {m['ari']:.4f}  test_log_likelihood {m['test_log_likelihood']:.2f} nats")


if __name__ == "__main__":
    cli.run(main)
