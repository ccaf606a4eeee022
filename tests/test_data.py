"""IDX -> Parquet: validation, round trip, determinism, atomicity, download path."""
import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import DataError
from pipeline.data.idx import DATASET_MD5, FILES, download, load_raw_split
from pipeline.data.load import load_split, read_manifest
from pipeline.data.shards import write_shards
from tests.conftest import make_raw

COUNTS = {"train": 60, "test": 20}


def test_round_trip_synthetic(tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "shards"
    manifest = write_shards(out, raw, shards=3, train_limit=None, counts=COUNTS, md5=None)
    images, labels = load_raw_split(raw, "train", 60, md5=None)
    assert [e["rows"] for e in manifest["splits"]["train"]] == [20, 20, 20]
    back = load_split(out, "train", with_labels=True)
    np.testing.assert_array_equal(back.pixels, images)
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_array_equal(back.index, np.arange(60))
    schema = pq.read_schema(out / manifest["splits"]["train"][0]["file"])
    pixels = schema.field("pixels").type
    assert pa.types.is_fixed_size_list(pixels) and pixels.list_size == 784
    assert pixels.value_type == pa.uint8() and schema.field("label").type == pa.uint8()


def test_a_split_reads_back_whole_in_order_without_labels_unless_asked(tmp_path):
    raw = make_raw(tmp_path / "raw")
    write_shards(tmp_path / "s", raw, shards=4, train_limit=None, counts=COUNTS, md5=None)
    split = load_split(tmp_path / "s", "train")
    assert split.index.tolist() == list(range(60))
    assert split.labels is None  # training never gets labels
    assert len(load_split(tmp_path / "s", "train", with_labels=True).labels) == 60


def test_same_input_gives_byte_identical_shards(tmp_path):
    raw = make_raw(tmp_path / "raw")
    for name in ("a", "b"):
        write_shards(tmp_path / name, raw, shards=2, train_limit=30, counts=COUNTS, md5=None)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(files) == 5  # 2 + 2 shards + manifest
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert read_manifest(tmp_path / "a")["splits"]["train"][1]["rows"] == 15


def corrupt(raw, how):
    name = FILES["train"][0]
    path = raw / name
    data = path.read_bytes()
    if how == "truncated_gzip":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bad_magic":
        body = gzip.decompress(data)
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + body[4:]))
    elif how == "short_body":
        path.write_bytes(gzip.compress(gzip.decompress(data)[:-100]))
    elif how == "missing":
        path.unlink()
    return path


@pytest.mark.parametrize("how, needle", [
    ("truncated_gzip", "not a readable gzip file"),
    ("bad_magic", "magic number"),
    ("short_body", "truncated"),
    ("missing", "is missing"),
])
def test_corrupt_input_is_one_clear_line_and_leaves_nothing(tmp_path, how, needle):
    raw = make_raw(tmp_path / "raw")
    path = corrupt(raw, how)
    out = tmp_path / "shards"
    with pytest.raises(DataError) as e:
        write_shards(out, raw, shards=2, train_limit=None, counts=COUNTS, md5=None)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temp dirs left behind


def test_failed_rewrite_keeps_previous_output(tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "shards"
    write_shards(out, raw, shards=2, train_limit=None, counts=COUNTS, md5=None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    corrupt(raw, "bad_magic")
    with pytest.raises(DataError):
        write_shards(out, raw, shards=2, train_limit=None, counts=COUNTS, md5=None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_label_out_of_range(tmp_path):
    from pipeline.data.idx import LABELS_MAGIC
    from tests.conftest import write_idx

    raw = make_raw(tmp_path / "raw")
    write_idx(raw / FILES["test"][1], np.full(20, 11), LABELS_MAGIC)
    with pytest.raises(DataError, match="label 11 outside 0..9"):
        write_shards(tmp_path / "s", raw, shards=2, train_limit=None, counts=COUNTS, md5=None)


def test_real_mnist_md5_and_counts(tmp_path, mnist_dir):
    manifest = write_shards(tmp_path / "s", mnist_dir, shards=4, train_limit=None)
    assert sum(e["rows"] for e in manifest["splits"]["train"]) == 60_000
    assert sum(e["rows"] for e in manifest["splits"]["test"]) == 10_000
    test = load_split(tmp_path / "s", "test", with_labels=True)
    assert test.pixels.dtype == np.uint8 and test.pixels.shape == (10_000, 784)
    assert np.bincount(test.labels).tolist()[:3] == [980, 1135, 1032]  # known class counts


def test_real_mnist_md5_mismatch_is_caught(tmp_path, mnist_dir):
    raw = tmp_path / "raw"
    raw.mkdir()
    for pair in FILES.values():
        for name in pair:
            (raw / name).write_bytes((mnist_dir / name).read_bytes())
    body = bytearray(gzip.decompress((raw / FILES["test"][1]).read_bytes()))
    body[100] = (body[100] + 1) % 10  # one label changed: structure fine, content wrong
    (raw / FILES["test"][1]).write_bytes(gzip.compress(bytes(body)))
    with pytest.raises(DataError, match="content MD5"):
        write_shards(tmp_path / "s", raw, shards=2, train_limit=1000)


def test_download_without_network_says_where_to_put_files(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tvu

    calls = []

    def offline(url, root, filename, md5):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvu, "download_url", offline)
    raw = tmp_path / "raw"
    with pytest.raises(DataError) as e:
        download(raw)
    msg = str(e.value)
    assert "could not download" in msg and str(raw) in msg and "\n" not in msg
    assert calls and all(u.endswith("train-images-idx3-ubyte.gz") for u in calls)


def test_fashion_mnist_downloads_from_its_own_mirrors(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tvu

    calls = []

    def offline(url, root, filename, md5):
        calls.append((url, md5))
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(tvu, "download_url", offline)
    with pytest.raises(DataError, match="fashion_mnist"):
        download(tmp_path / "raw", "fashion_mnist")
    assert calls and all("fashion-mnist" in u for u, _ in calls)
    assert calls[0][1] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"  # torchvision's .gz MD5


FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@pytest.mark.skipif(not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_md5_and_counts(tmp_path):
    images, labels = load_raw_split(FASHION, "test", 10_000, DATASET_MD5["fashion_mnist"])
    assert images.shape == (10_000, 784) and np.bincount(labels).tolist() == [1000] * 10
    with pytest.raises(DataError, match="content MD5"):  # MNIST checksums reject it
        load_raw_split(FASHION, "test", 10_000, DATASET_MD5["mnist"])


def test_manifest_checksum_catches_tampered_shard(tmp_path):
    raw = make_raw(tmp_path / "raw")
    write_shards(tmp_path / "s", raw, shards=2, train_limit=None, counts=COUNTS, md5=None)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    f = tmp_path / "s" / m["splits"]["test"][0]["file"]
    f.write_bytes(f.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match="checksum"):
        load_split(tmp_path / "s", "test")


def rewrite_shard(shard_dir, split, mutate, rows=None):
    """Replace the first shard of `split` by mutate(its table), and fix its manifest entry
    (sha256; rows too, unless given) so that only prepare's contract can catch it."""
    from pipeline.data.shards import sha256_file

    m = json.loads((shard_dir / "manifest.json").read_text())
    entry = m["splits"][split][0]
    path = shard_dir / entry["file"]
    table = mutate(pq.read_table(path))
    pq.write_table(table, path)
    entry.update(sha256=sha256_file(path), rows=len(table) if rows is None else rows)
    (shard_dir / "manifest.json").write_text(json.dumps(m))
    return path


def pixels_as(values, width=784):
    return lambda t: t.set_column(t.schema.get_field_index("pixels"), "pixels",
                                  pa.FixedSizeListArray.from_arrays(pa.array(values(t)), width))


def grey(t):
    return t.column("pixels").combine_chunks().flatten().to_numpy()


# (how the first shard is broken, what the one-line error says): each is a shard whose
# manifest entry matches it, so the checksum passes and prepare's contract must catch it
BAD_SHARDS = {
    "renamed_column": (lambda t: t.rename_columns(["index", "label", "pixelz"]), "no column 'pixels'"),
    "float_pixels": (pixels_as(lambda t: grey(t).astype(np.float32) / 255), "'pixels' is float[784], expected uint8[784]"),
    "783_wide": (pixels_as(lambda t: grey(t).reshape(-1, 784)[:, :783].ravel(), 783), "'pixels' is uint8[783]"),
    "uint16_300": (pixels_as(lambda t: np.full(len(t) * 784, 300, np.uint16)), "'pixels' is uint16[784]"),
    "int_index": (lambda t: t.set_column(0, "index", t.column("index").cast(pa.int64())), "'index' is int64"),
    "rows_short": (lambda t: t.slice(0, len(t) - 25), "175 rows where manifest.json says 200"),
}


@pytest.mark.parametrize("how", sorted(BAD_SHARDS))
def test_a_shard_off_prepares_contract_is_one_line_naming_it(tiny_shards, how):
    from pipeline.data.load import check_shards

    mutate, needle = BAD_SHARDS[how]
    path = rewrite_shard(tiny_shards, "train", mutate, rows=200 if how == "rows_short" else None)
    for read in (lambda: load_split(tiny_shards, "train"), lambda: check_shards(tiny_shards, "train")):
        with pytest.raises(DataError) as e:
            read()
        msg = str(e.value)
        assert needle in msg and str(path) in msg and "dvc repro prepare" in msg and "\n" not in msg


def test_missing_pixel_values_and_labels_outside_0_9_are_caught_when_read(tiny_shards):
    nulls = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(20 * 784, np.uint8)), 784,
                                              mask=pa.array([True] + [False] * 19))
    path = rewrite_shard(tiny_shards, "test", lambda t: t.set_column(2, "pixels", nulls))
    with pytest.raises(DataError, match="missing pixel values.*dvc repro prepare") as e:
        load_split(tiny_shards, "test")
    assert str(path) in str(e.value)
    path = rewrite_shard(tiny_shards, "train", lambda t: t.set_column(1, "label", pa.array(np.full(200, 11, np.uint8))))
    load_split(tiny_shards, "train")  # training reads no labels
    with pytest.raises(DataError, match="labels outside 0..9.*dvc repro prepare") as e:
        load_split(tiny_shards, "train", with_labels=True)  # the sweep's validation does
    assert str(path) in str(e.value)


def test_a_missing_shard_or_split_names_it(tiny_shards):
    from pipeline.data.load import check_shards

    m = read_manifest(tiny_shards)
    (tiny_shards / m["splits"]["train"][1]["file"]).unlink()
    for read in (lambda: load_split(tiny_shards, "train"), lambda: check_shards(tiny_shards, "train")):
        with pytest.raises(DataError, match=r"train-001-of-002.parquet is missing, though manifest.json lists it; rerun the prepare"):
            read()
    with pytest.raises(DataError, match="lists no 'valid' split; rerun the prepare stage"):
        check_shards(tiny_shards, "valid")


def test_the_writer_keeps_the_readers_schema(tiny_shards):
    from pipeline.data.load import SHARD_SCHEMA

    for e in read_manifest(tiny_shards)["splits"]["train"]:
        assert pq.read_schema(tiny_shards / e["file"]).remove_metadata().equals(SHARD_SCHEMA)


def test_train_and_evaluate_stages_refuse_a_bad_shard_in_one_line(tmp_path, tiny_shards):
    """train: before Ray starts (check_before_ray); evaluate: as it reads the test split."""
    from pipeline.models.checkpoint import save_model
    from pipeline.models.registry import build_model, model_config
    from tests.test_stages import run_stage

    (tmp_path / "params.yaml").write_text("{}\n")
    path = rewrite_shard(tiny_shards, "train", BAD_SHARDS["uint16_300"][0])
    r = run_stage("train.py", "--shards", str(tiny_shards), "--model", "m.pt", "--live", "live",
                  "--record", "r.json", cwd=tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {path}: column 'pixels' is uint16[784], expected uint8[784]")
    assert "dvc repro prepare" in r.stderr and "ray" not in r.stdout.lower()
    save_model(build_model(model_config({"moe_vae.experts": 2, "net.hidden": 8})), tmp_path / "m.pt")
    path = rewrite_shard(tiny_shards, "test", BAD_SHARDS["renamed_column"][0])
    r = run_stage("evaluate.py", "--shards", str(tiny_shards), "--model", "m.pt", "--live", "live",
                  cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: {path}: no column 'pixels' (it has index, label, pixelz), not what prepare writes; "
        f"rerun the prepare stage (dvc repro prepare)"]
    assert not (tmp_path / "live").exists()
