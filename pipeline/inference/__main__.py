"""Use a trained model file: cluster images, or draw samples of every component.

    python -m pipeline.inference cluster models/model.pt digits/ --out clusters.csv
    python -m pipeline.inference sample models/model.pt --n 8 --out samples.png

Images: 28x28 PNG files (colour is turned grey), folders of them, IDX files (.gz or not)
and Parquet shards of the prepare stage; white digits on black as in MNIST (--invert for
dark ink on white).
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from pipeline import cli


def arguments(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.inference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cluster", help="one CSV row per image: name, cluster, probability")
    c.add_argument("model", help="a model file of the train stage (models/model.pt)")
    c.add_argument("images", nargs="+", help="PNG files, folders of PNGs, IDX files, Parquet shards")
    c.add_argument("--out", default="clusters.csv", help="CSV to write (default: clusters.csv)")
    c.add_argument("--invert", action="store_true", help="dark ink on a light background: use 255 - pixels")
    c.add_argument("--batch-size", type=int, default=100, help="images per batch (default: 100)")
    c.add_argument("--seed", type=int, default=0,
                   help="seeds the binarization of a Bernoulli model, as evaluate.seed (default: 0)")
    s = sub.add_parser("sample", help="a PNG grid: n samples (rows) of every component (columns)")
    s.add_argument("model", help="a model file of the train stage (models/model.pt)")
    s.add_argument("--n", type=int, default=8, help="samples per component (default: 8)")
    s.add_argument("--out", default="samples.png", help="PNG to write (default: samples.png)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--scale", type=int, default=2, help="screen pixels per image pixel (default: 2)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = arguments(argv)
    from pipeline.core.io import write_rows_csv
    from pipeline.inference import cluster_images, load_model, read_images, sample_grid, save_png

    model = load_model(args.model)
    if args.command == "sample":
        grid = sample_grid(model, args.n, args.seed, args.scale)  # (H, W) uint8
        save_png(grid, args.out)
        cli.log(f"sample: {args.n} samples of each component of a {model.cfg.kind} model -> {args.out}")
        return
    found = cluster_images(model, *read_images(args.images, args.invert), args.batch_size, args.seed)
    write_rows_csv(args.out, found.rows())
    counts = ", ".join(f"{k}: {n}" for k, n in enumerate(found.counts()))
    cli.log(f"cluster: {len(found.names)} images of a {model.cfg.kind} model -> {args.out}; "
            f"images per cluster {counts}")


if __name__ == "__main__":
    cli.run(main)
