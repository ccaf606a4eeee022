"""prepare: MNIST (or Fashion-MNIST) IDX .gz files -> validated Parquet shards + manifest.json."""
from pathlib import Path

from pipeline import cli
from pipeline.data.idx import DATASET_MD5, FILES, download
from pipeline.data.shards import write_shards


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--out", required=True, help="shard directory to write")
    args = p.parse_args()
    data = cli.load(args).data
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
