"""Using a trained model file (models/model.pt) outside the pipeline: reading images
(images.py: PNGs, folders of them, IDX files, Parquet shards), each image's cluster and
the sample grid of every component (predict.py, the evaluate stage's own code paths), and
the command line (`python -m pipeline.inference cluster|sample`, __main__.py).
docs/using-a-model.md shows both.

    from pipeline.inference import load_model, read_images, cluster_images, sample_grid
    model = load_model("models/model.pt")
    pixels, names = read_images(["digits/"])          # (N, 784) uint8, N names
    found = cluster_images(model, pixels, names)      # found.cluster, found.probability
"""
from pipeline.inference.images import read_images, save_png
from pipeline.inference.predict import CLUSTERED_KINDS, Clusters, cluster_images, sample_grid
from pipeline.models.checkpoint import load_model

__all__ = ["load_model", "read_images", "save_png", "cluster_images", "sample_grid", "Clusters",
           "CLUSTERED_KINDS"]
