"""pipeline.cluster.submit and pipeline.core.storage without a cluster: what gets uploaded, the output
bundle's round trip, its integrity checks, and storage paths vs URIs."""
import io
import subprocess
import tarfile

import pytest
import yaml

from pipeline.core import storage
from pipeline.cluster.submit import (SubmitError, declared_outputs, from_log, log_frames, pack, selected,
                             stage_workspace, unpack)
from tests.conftest import ROOT


def test_declared_outputs_of_the_project_pipeline():
    outs = selected(declared_outputs(ROOT / "dvc.yaml"), ["metrics", "plots", "models"])
    assert {"models/model.pt", "metrics/train.json", "plots/train/curves.csv",
            "metrics/evaluate.json", "plots/evaluate"} <= set(outs)
    assert "data/shards" not in outs and not [p for p in outs if "${" in p]


@pytest.mark.parametrize("set_name", ["compare", "results"])
def test_declared_outputs_of_an_experiment_pipeline_expand_its_matrix(set_name):
    outs = declared_outputs(ROOT / set_name / "dvc.yaml", ROOT)  # wdir: .. -> paths from the root
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())[set_name]
    for preset in cfg["presets"]:
        for seed in cfg["seeds"]:
            assert f"models/{set_name}/{preset}/seed{seed}.pt" in outs
            assert f"{set_name}/runs/{preset}/seed{seed}/evaluate.json" in outs
    assert f"{set_name}/table.md" in outs and not [p for p in outs if "${" in p or ".." in p]


def test_bundle_round_trip_replaces_outputs_and_survives_the_log(tmp_path):
    cluster, ws = tmp_path / "cluster", tmp_path / "ws"
    (cluster / "plots/evaluate").mkdir(parents=True)
    (cluster / "plots/evaluate/confusion.csv").write_text("new")
    (cluster / "metrics").mkdir()
    (cluster / "metrics/evaluate.json").write_text('{"nmi": 0.5}')
    (cluster / "dvc.lock").write_text("schema: '2.0'\n")
    (ws / "plots/evaluate").mkdir(parents=True)
    (ws / "plots/evaluate/stale.png").write_text("old")  # a file the new run no longer makes
    data = pack(cluster, ["plots/evaluate", "metrics/evaluate.json", "dvc.lock", "models/model.pt"])
    log = "epoch 1/1 ...\n" + "\n".join(log_frames(data)) + "\nsubmit: published\n"
    allowed = ["plots/evaluate", "metrics/evaluate.json", "metrics/train.json", "dvc.lock"]
    written = unpack(from_log(log), ws, allowed)
    assert written[-1] == "dvc.lock"  # last: the lock never refers to outputs not yet there
    assert sorted(written) == ["dvc.lock", "metrics/evaluate.json", "plots/evaluate"]
    assert (ws / "plots/evaluate/confusion.csv").read_text() == "new"
    assert not (ws / "plots/evaluate/stale.png").exists()  # the folder was replaced whole
    assert sorted(p.name for p in ws.iterdir()) == ["dvc.lock", "metrics", "plots"]  # no temp left


def test_corrupt_or_missing_bundle_is_one_line_error():
    lines = log_frames(b"x" * 10000)
    lines[2] = lines[2][:-4] + "AAAA"
    with pytest.raises(SubmitError, match="SHA-256 mismatch"):
        from_log("\n".join(lines))
    with pytest.raises(SubmitError, match="no complete output bundle"):
        from_log("\n".join(lines[:-1]))  # the job died before the end marker


def bundle(*members) -> bytes:
    """A tar.gz of crafted members: (name, type, payload or link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
                info.mode = 0o755
                tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("members", [
    [("../escaped.txt", tarfile.REGTYPE, b"bad")],
    [("/abs.txt", tarfile.REGTYPE, b"bad")],
    # a member named "." replaced the whole project folder before
    [(".", tarfile.DIRTYPE, ""), ("./.git/hooks/pre-commit", tarfile.REGTYPE, b"#!/bin/sh\n")],
    [("pipeline/__init__.py", tarfile.REGTYPE, b"bad")],  # a real path, but not an output
    [("metrics", tarfile.DIRTYPE, "")],  # the folder above an output
    [("metrics/evaluate.json", tarfile.SYMTYPE, "/etc/passwd")],
    [("metrics/evaluate.json", tarfile.LNKTYPE, "pipeline/__init__.py")],
    [("plots/evaluate/x", tarfile.SYMTYPE, "../../..")],
    [("metrics/evaluate.json", tarfile.FIFOTYPE, "")],
], ids=["dotdot", "absolute", "dot", "undeclared", "parent", "symlink", "hardlink", "nested-link", "fifo"])
def test_a_bundle_writes_only_declared_outputs(tmp_path, members):
    ws = tmp_path / "ws"
    (ws / "pipeline").mkdir(parents=True)
    (ws / "pipeline/__init__.py").write_text("ok")
    (ws / ".git").mkdir()
    before = sorted(str(p.relative_to(ws)) for p in ws.rglob("*"))
    with pytest.raises(SubmitError) as e:
        unpack(bundle(*members), ws, ["metrics/evaluate.json", "plots/evaluate", "dvc.lock"])
    assert "not a declared output" in str(e.value) and "\n" not in str(e.value)
    assert sorted(str(p.relative_to(ws)) for p in ws.rglob("*")) == before  # nothing written
    assert (ws / "pipeline/__init__.py").read_text() == "ok"


def test_a_damaged_bundle_is_one_line(tmp_path):
    data = bundle(("metrics/evaluate.json", tarfile.REGTYPE, b"{}"))
    with pytest.raises(SubmitError, match="cannot be unpacked") as e:
        unpack(data[: len(data) // 2], tmp_path, ["metrics/evaluate.json"])
    assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_upload_holds_git_files_and_includes_but_not_ignored_outputs(tmp_path):
    repo, stage = tmp_path / "repo", tmp_path / "stage"
    (repo / "data/raw").mkdir(parents=True)
    (repo / "models").mkdir()
    (repo / ".gitignore").write_text("/data/raw/\n/models/\n")
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "data/raw/train.gz").write_text("raw")
    (repo / "models/model.pt").write_text("stale local model")
    subprocess.run("git init -q && git add -A", shell=True, cwd=repo, check=True)
    (repo / "untracked.py").write_text("")  # untracked but not ignored: travels too
    stage.mkdir()
    stage_workspace(repo, ["data/raw"], stage)
    files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    assert files == [".gitignore", "data/raw/train.gz", "dvc.yaml", "untracked.py"]
    with pytest.raises(SubmitError, match="--include nope"):
        stage_workspace(repo, ["nope"], stage)


def test_storage_paths_and_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve_storage("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.resolve_storage("gs://b/p") == "gs://b/p"
    assert storage.resolve_storage(".ray_results") == str(tmp_path / ".ray_results")
    assert storage.join("s3://bucket/runs", "moe-1") == "s3://bucket/runs/moe-1"
    # ".gz" names: bytes must come back as written, not (de)compressed by pyarrow
    for uri in (str(tmp_path / "a/b.tar.gz"), f"file://{tmp_path}/c/d.tar.gz"):
        storage.put_bytes(uri, b"payload")
        assert storage.get_bytes(uri) == b"payload"
    run = tmp_path / "runs/moe-1"
    (run / "checkpoint_0").mkdir(parents=True)
    assert storage.delete_tree(f"file://{run}") == "" and not run.exists()
    assert storage.delete_tree(str(run)) == ""  # already gone: fine


def test_streamed_log_hides_the_bundle_even_when_chunks_split_lines(capsys):
    import asyncio

    from pipeline.cluster.submit import MARK, stream

    class FakeClient:
        async def tail_job_logs(self, job_id):
            for chunk in ["epoch 1/1 loss 3", f"1.0\n{MARK[:5]}", f"{MARK[5:]} begin abc\n{MARK} end\ndone"]:
                yield chunk

    asyncio.run(stream(FakeClient(), "job"))
    assert capsys.readouterr().out == "epoch 1/1 loss 31.0\ndone\n"
