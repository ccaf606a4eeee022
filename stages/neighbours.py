"""neighbours: training shards -> each image's distances to its k nearest training images
(label-free), read by every run and sweep trial that needs them."""
import time
from pathlib import Path

from pipeline import cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--shards", required=True)
    p.add_argument("--out", required=True, help="folder to write: distances.npy, meta.json")
    args = p.parse_args()
    k = cli.load(args).neighbours.k

    from pipeline.data.neighbours import write_neighbours

    t0 = time.perf_counter()
    meta = write_neighbours(Path(args.shards), Path(args.out), k)
    cli.log(f"neighbours: distances to the {k} nearest of {meta['rows']} training images in "
            f"{time.perf_counter() - t0:.0f}s -> {args.out}")


if __name__ == "__main__":
    cli.run(main)
