"""validate: one run's model + the train shards -> its scores on the validation split (the
last 10 000 training images; see pipeline/experiments/validation.py), for choosing recipes
without reading the test split."""
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--metrics", required=True, help="JSON file to write")
    p.add_argument("--rows", type=int, default=10000, help="the last ROWS training images")
    args = p.parse_args()

    from pipeline.core.io import write_json
    from pipeline.experiments.validation import validate_run

    scores = validate_run(Path(args.shards), Path(args.model), args.rows)
    write_json(Path(args.metrics), scores)
    cli.log(f"validate: val_cluster_accuracy {scores['val_cluster_accuracy']:.4f}  "
            f"val_mutual_info {scores['val_mutual_info']:.4f} ({scores['val_images']} images)")


if __name__ == "__main__":
    cli.run(main)
