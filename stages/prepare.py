"""prepare: MNIST (or Fashion-MNIST) IDX .gz files -> validated Parquet shards + manifest.json."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from pipeline import cli  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.data import DATASET_MD5, FILES, download, write_shards  # noqa: E402


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="shard directory to write")
    args = p.parse_args()
    data = load_params(args.params).data
    raw = Path(data.raw_dir)
    if not all((raw / name).exists() for pair in FILES.values() for name in pair):
        cli.log(f"{data.dataset} files missing from {raw}; downloading with torchvision")
        download(raw, data.dataset)
    manifest = write_shards(Path(args.out), raw, data.shards, data.train_limit,
                            md5=DATASET_MD5[data.dataset])
    rows = {s: sum(e["rows"] for e in entries) for s, entries in manifest["splits"].items()}
    cli.log(f"prepare: wrote {data.shards} shards per split to {args.out} ({rows})")


if __name__ == "__main__":
    cli.run(main)
