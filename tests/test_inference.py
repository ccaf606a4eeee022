"""A model file used outside the pipeline (pipeline/inference): every image reader round-trips
and refuses a wrong size in one line, every kind clusters as the evaluate stage does (or
says it has no clusters) and draws its sample grid, and the CLI writes CSV and PNG files."""
import os
import struct
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.cli import run as cli_run
from pipeline.core.errors import DataError, PipelineError
from pipeline.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from pipeline.data.load import load_split, read_manifest
from pipeline.evaluation.hierarchy import sub_assign
from pipeline.evaluation.metrics import assign_clusters, prepare_test
from pipeline.inference import cluster_images, load_model, read_images, sample_grid
from pipeline.inference.__main__ import main as cli_main
from pipeline.models.checkpoint import save_model
from pipeline.models.registry import KINDS, build_model
from tests.conftest import ROOT, write_idx
from tests.test_models import COMPONENTS, small

KINDS = sorted(KINDS)


@pytest.fixture
def digits():
    """(12, 784) uint8: distinct images with every grey level in play (k-means takes 10+)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 784)).astype(np.uint8)


def write_pngs(folder, pixels, side=28):
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:02d}.png" for i in range(len(pixels))]
    for p, px in zip(paths, pixels):
        Image.fromarray(px.reshape(side, side)).save(p)
    return paths


def one_line_error(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


# -- readers ------------------------------------------------------------------------

def test_png_files_and_a_folder_round_trip(digits, tmp_path):
    paths = write_pngs(tmp_path / "pngs", digits)
    pixels, names = read_images([paths[3], paths[0]])
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 784)
    assert (pixels == digits[[3, 0]]).all() and names == [str(paths[3]), str(paths[0])]
    (tmp_path / "pngs" / "notes.txt").write_text("not an image")  # skipped in a folder
    pixels, names = read_images([tmp_path / "pngs"])
    assert (pixels == digits).all() and names == [str(p) for p in paths]  # sorted by name


def test_colour_pngs_turn_grey_and_invert_flips_ink(digits, tmp_path):
    rgb = np.repeat(digits[0].reshape(28, 28, 1), 3, axis=2)  # grey in RGB: luma is the value
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    rgba = np.concatenate([rgb, np.full((28, 28, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    pixels, _ = read_images([tmp_path / "rgb.png", tmp_path / "rgba.png"])
    assert (pixels == digits[0]).all()
    inverted, _ = read_images([tmp_path / "rgb.png"], invert=True)
    assert (inverted[0] == 255 - digits[0]).all()


@pytest.mark.parametrize("gzipped", [True, False])
def test_idx_files_round_trip_gzipped_or_not(digits, tmp_path, gzipped):
    path = tmp_path / ("images-idx3-ubyte.gz" if gzipped else "images-idx3-ubyte")
    if gzipped:
        write_idx(path, digits.reshape(-1, 28, 28), IMAGES_MAGIC)
    else:
        path.write_bytes(struct.pack(">4I", IMAGES_MAGIC, len(digits), 28, 28) + digits.tobytes())
    pixels, names = read_images([path])
    assert (pixels == digits).all() and names == [f"{path}:{i}" for i in range(len(digits))]


def test_a_parquet_shard_round_trips(tiny_shards):
    entry = read_manifest(tiny_shards)["splits"]["test"][1]  # the second of two test shards
    pixels, names = read_images([tiny_shards / entry["file"]])
    split = load_split(tiny_shards, "test")  # what the evaluate stage reads
    rows = slice(len(split.index) - entry["rows"], None)  # shards split the rows in order
    assert pixels.shape == (entry["rows"], 784) and (pixels == split.pixels[rows]).all()
    assert names == [f"{tiny_shards / entry['file']}:{i}" for i in split.index[rows]]


def test_wrong_sizes_fail_in_one_line_naming_file_size_and_fix(tmp_path):
    png = write_pngs(tmp_path / "big", np.zeros((1, 32 * 32), np.uint8), side=32)[0]
    idx_gz, idx = tmp_path / "big-idx3-ubyte.gz", tmp_path / "big.idx"
    write_idx(idx_gz, np.zeros((2, 32, 32)), IMAGES_MAGIC)
    idx.write_bytes(struct.pack(">4I", IMAGES_MAGIC, 2, 32, 32) + bytes(2 * 32 * 32))
    shard = tmp_path / "big.parquet"
    pq.write_table(pa.table({"pixels": pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(2 * 1024, np.uint8)), 1024)}), shard)
    for path in (png, idx_gz, idx, shard):
        with pytest.raises(DataError) as e:
            read_images([path])
        one_line_error(e, str(path), "32x32", "28x28", "resize")


def test_what_is_not_an_image_fails_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    write_idx(tmp_path / "labels-idx1-ubyte.gz", np.zeros(3), LABELS_MAGIC)
    (tmp_path / "empty").mkdir()
    cases = {tmp_path / "notes.txt": "not an image", tmp_path / "labels-idx1-ubyte.gz": "magic number",
             tmp_path / "empty": "no .png files", tmp_path / "gone.png": "is missing"}
    for path, words in cases.items():
        with pytest.raises(DataError) as e:
            read_images([path])
        one_line_error(e, str(path), words)


# -- every kind -------------------------------------------------------------------

def spread(model):
    """Wider weights: a fresh tiny model sends every image to one cluster, this one does not."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.fixture(params=KINDS)
def model_file(request, tmp_path):
    """A tiny model of each kind (Bernoulli: the binarization seed matters), saved."""
    torch.manual_seed(0)
    model = spread(build_model(small(request.param, likelihood="bernoulli")))
    save_model(model, tmp_path / f"{request.param}.pt")
    return tmp_path / f"{request.param}.pt"


def test_every_kind_clusters_as_the_evaluate_stage_does_or_says_it_has_none(model_file, digits, tmp_path):
    model = load_model(model_file)
    pixels, names = read_images(write_pngs(tmp_path / "pngs", digits))
    if model.cfg.kind not in COMPONENTS:  # vae, mmd_vae: evaluate's k-means on these images
        found = cluster_images(model, pixels, names, seed=3)
        clusters, n_clusters, _ = assign_clusters(model.eval(), prepare_test(model, digits, 3), 100, 3)
        assert (found.cluster == clusters).all() and len(found.counts()) == n_clusters
        assert np.isnan(found.probability).all() and {r["probability"] for r in found.rows()} == {""}
        with pytest.raises(PipelineError) as e:
            cluster_images(model, pixels[:n_clusters - 1])
        one_line_error(e, f"a {model.cfg.kind} model has no cluster variable", f"at least {n_clusters}")
        return
    found = cluster_images(model, pixels, names, batch_size=4, seed=3)
    model.eval()
    x = prepare_test(model, digits, 3)  # the evaluate stage, evaluate.seed = 3
    clusters, n_clusters, _ = assign_clusters(model, x, 100, 3)
    assert n_clusters == COMPONENTS[model.cfg.kind][0] and found.probs.shape == (len(digits), n_clusters)
    assert (found.cluster == clusters).all() and len(set(clusters)) > 1
    assert np.allclose(found.probs, model.cluster_probs(x).detach().numpy(), atol=1e-6)
    assert np.allclose(found.probs.sum(1), 1, atol=1e-5) and (found.probability == found.probs.max(1)).all()
    assert not np.allclose(found.probs, cluster_images(model, pixels, seed=4).probs)  # another draw
    assert found.names == names and [r["name"] for r in found.rows()] == names
    if model.cfg.kind == "hmoe_vae":
        sub, conf = sub_assign(model, x, clusters, 100)
        assert (found.sub_cluster == sub).all() and np.allclose(found.leaf_probability, conf)
        assert set(found.rows()[0]) == {"name", "cluster", "probability", "sub_cluster", "leaf_probability"}
    else:
        assert found.sub_cluster is None and set(found.rows()[0]) == {"name", "cluster", "probability"}


def test_every_kind_draws_one_column_per_component(model_file):
    model = load_model(model_file)
    columns = COMPONENTS.get(model.cfg.kind, (1, 1))[1]
    grid = sample_grid(model, n=3, seed=5, scale=1)
    assert grid.dtype == np.uint8 and grid.shape == (3 * 30 + 2, columns * 30 + 2)  # 2-px gutters
    assert (grid == sample_grid(model, n=3, seed=5, scale=1)).all()  # the seed fixes the draw
    assert not (grid == sample_grid(model, n=3, seed=6, scale=1)).all()
    torch.manual_seed(5)
    first = model.sample_components(3)[:, 0].numpy()  # (C, 784): row 0 of the grid
    cells = np.stack([grid[2:30, 2 + 30 * c:30 + 30 * c] for c in range(columns)]).reshape(columns, -1)
    assert np.abs((255 - cells.astype(float)) / 255 - first).max() < 0.01  # dark ink on white


def test_the_cli_writes_rows_and_a_picture_for_every_kind(model_file, digits, tmp_path, capsys):
    model = load_model(model_file)
    out = tmp_path / "samples.png"
    cli_main(["sample", str(model_file), "--n", "2", "--out", str(out), "--seed", "1"])
    assert (np.asarray(Image.open(out)) == sample_grid(model, 2, 1)).all()
    if model.cfg.kind not in COMPONENTS:
        return
    write_pngs(tmp_path / "pngs", digits)
    cli_main(["cluster", str(model_file), str(tmp_path / "pngs"), "--out", str(tmp_path / "c.csv")])
    found = cluster_images(model, digits)
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0].startswith("name,cluster,probability") and len(lines) == 1 + len(digits)
    assert [int(line.split(",")[1]) for line in lines[1:]] == found.cluster.tolist()
    summary = capsys.readouterr().out.splitlines()[-1]
    assert f"cluster: {len(digits)} images" in summary
    assert summary.endswith(", ".join(f"{k}: {n}" for k, n in enumerate(found.counts())))


# -- the command line, as a user runs it ----------------------------------------------

def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline.inference", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_cli_as_a_user_runs_it(tmp_path, tiny_shards, capsys):
    torch.manual_seed(0)
    save_model(spread(build_model(small("moe_vae", likelihood="bernoulli"))), tmp_path / "moe.pt")
    save_model(build_model(small("vae")), tmp_path / "vae.pt")
    test = load_split(tiny_shards, "test")
    pngs = write_pngs(tmp_path / "pngs", test.pixels)
    r = cli("cluster", tmp_path / "moe.pt", tmp_path / "pngs", "--out", "png.csv", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(f"cluster: {len(test.pixels)} images"), r.stderr
    shards = sorted(str(p) for p in tiny_shards.glob("test-*.parquet"))
    cli_main(["cluster", str(tmp_path / "moe.pt"), *shards, "--out", str(tmp_path / "shards.csv")])
    png_rows, shard_rows = ((tmp_path / f).read_text().splitlines()[1:] for f in ("png.csv", "shards.csv"))
    assert [row.split(",")[0] for row in png_rows] == [str(p) for p in pngs]
    assert [row.split(",")[1:] for row in png_rows] == [row.split(",")[1:] for row in shard_rows]
    model = load_model(tmp_path / "moe.pt")  # the evaluate stage's clusters of the test split
    clusters, _, _ = assign_clusters(model.eval(), prepare_test(model, test.pixels, 0), 100, 0)
    assert [int(row.split(",")[1]) for row in png_rows] == clusters.tolist() and len(set(clusters)) > 1

    write_pngs(tmp_path / "big", np.zeros((1, 32 * 32), np.uint8), side=32)
    failures = {("cluster", tmp_path / "moe.pt", tmp_path / "big", "--out", "bad.csv"): "32x32",
                ("cluster", tmp_path / "vae.pt", pngs[0], "--out", "bad.csv"):
                "no cluster variable"}
    for args, words in failures.items():
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("error: ") and words in r.stderr, r.stderr
    failures = {("sample", tmp_path / "missing.pt", "--out", "bad.png"): "missing.pt is missing",
                ("sample", tmp_path / "moe.pt", "--n", "0", "--out", "bad.png"): "at least one"}
    for args, words in failures.items():  # the same cli.run, in this process
        with pytest.raises(SystemExit) as e:
            cli_run(lambda: cli_main([str(a) for a in args]))
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1 and words in err
    assert not list(tmp_path.glob("bad.*")) and not list(tmp_path.glob(".bad.*"))  # nothing half-written
