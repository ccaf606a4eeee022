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
