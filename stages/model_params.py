"""model_params: params.yaml's `model` section -> the active kind's params alone (kind,
net, likelihood and model.<kind>), validated, for the train stage to depend on: editing
another kind's block reruns nothing, and a typo in model.kind stops here with the
project's line, before DVC touches train's outputs."""
from pathlib import Path

import yaml

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="YAML file to write")
    args = p.parse_args()
    params = cli.load(args)  # the one-line error for a bad kind or value

    from pipeline.core.io import write_text
    from pipeline.params import active_model

    write_text(Path(args.out), "# written by the model_params stage (dvc.yaml) from params.yaml\n"
               + yaml.safe_dump(active_model(params), sort_keys=False))
    cli.log(f"model_params: model.kind={params.model.kind} -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
