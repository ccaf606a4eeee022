"""train: Parquet shards -> model file, per-epoch curves and final training metrics."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import cli  # noqa: E402
from pipeline.io import atomic_path, write_json  # noqa: E402
from pipeline.plots import save_components_over_epochs, write_rows_csv  # noqa: E402
from pipeline.storage import delete_tree  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__, variants=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--model", required=True, help="model file to write")
    p.add_argument("--curves", required=True, help="per-epoch CSV (a DVC plot)")
    p.add_argument("--metrics", required=True, help="final training metrics (JSON)")
    p.add_argument("--snapshots", required=True, help="per-epoch component samples (PNG)")
    args = p.parse_args()
    params = cli.load(args)  # validated before any Ray work starts

    import torch
    from pipeline.train import fit

    state = fit(params, Path(args.shards), log=cli.log)
    with atomic_path(args.model) as tmp:
        torch.save(state["model"], tmp)
    history = state["history"]
    write_rows_csv(Path(args.curves), history)
    save_components_over_epochs(Path(args.snapshots), state["snapshots"].numpy(), params.model.kind)
    last, restarts = history[-1], state["restarts"]
    write_json(args.metrics, {
        "final": {k: v for k, v in last.items() if k not in ("epoch", "seconds")},
        "epochs": last["epoch"],
        # the discarded restarts' epochs count: the wall time of the whole recipe
        "train_seconds": sum(r["seconds"] for r in history) + restarts.get("discarded_seconds", 0.0),
        "parameters": sum(v.numel() for v in state["model"]["state_dict"].values()),
        "hardware": state.get("hardware", "unknown"),
        **({"restarts": restarts} if restarts else {}),
    })
    kept = delete_tree(state["run_dir"])  # finished: nothing left to resume
    if kept:
        cli.log(f"train: {kept}; delete it by hand")
    cli.log(f"train: wrote {args.model}, {args.curves}, {args.snapshots}, {args.metrics}")


if __name__ == "__main__":
    cli.run(main)
