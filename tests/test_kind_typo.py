"""A model.kind typo through `dvc repro` on the real dvc.yaml: the model_params stage
stops with the project's line, before DVC reaches train, and none of train's outputs is
deleted. The outputs here are stand-in files, so nothing needs to train."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_a_kind_typo_stops_dvc_repro_and_keeps_the_train_outputs(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("stages", "pipeline"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["kind"] = "vaee"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outs = {"data/shards/part-0.parquet": b"s", "data/neighbours/distances.npy": b"n",
            "models/model.pt": b"a trained model", "dvclive/train/plots/metrics/loss.tsv": b"step\tloss\n",
            "dvclive/train/metrics.json": b"{}", "metrics/train_run.json": b"{}",
            "models/params.yaml": b"kind: moe_vae\n"}
    for path, body in outs.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(body)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    subprocess.run("git init -q && dvc init -q", shell=True, cwd=repo, env=env, check=True)

    # model_params and train alone, as after prepare and neighbours (no lock here)
    r = subprocess.run(["dvc", "repro", "--single-item", "model_params", "train"], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "error: params.yaml: model.kind='vaee' is invalid; choose one of" in r.stderr, r.stdout + r.stderr
    assert "Running stage 'train'" not in r.stdout  # stopped before train
    for path, body in outs.items():
        assert (repo / path).read_bytes() == body, path
