"""A model.kind typo through `dvc repro` on the real dvc.yaml and sweep/dvc.yaml: the
model_params stage stops with the project's line before DVC reaches train or a sweep, and
none of their outputs is deleted. The outputs here are stand-in files, so nothing trains;
prepare and neighbours are recorded as done with `dvc commit`."""
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

OUTS = {"data/shards/part-0.parquet": b"s", "data/neighbours/distances.npy": b"n",
        "models/params.yaml": b"kind: moe_vae\n",
        "models/model.pt": b"a trained model", "dvclive/train/plots/metrics/loss.tsv": b"step\tloss\n",
        "dvclive/train/metrics.json": b"{}", "metrics/train_run.json": b"{}",
        "sweep/table.csv": b"trial\n", "sweep/best_params.yaml": b"{}\n", "sweep/metrics.json": b"{}",
        "sweep/plots/trials.csv": b"trial\n"}


@pytest.mark.parametrize("target", ["train", "sweep/dvc.yaml:tune"])
def test_a_kind_typo_stops_at_model_params_and_deletes_nothing(tmp_path, target):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("stages", "pipeline"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", "sweep/dvc.yaml"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    for path, body in OUTS.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_bytes(body)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    # prepare and neighbours as done, with their stand-in outputs
    subprocess.run("git init -q && dvc init -q && dvc commit -q -f prepare neighbours", shell=True,
                   cwd=repo, env=env, check=True, capture_output=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["kind"] = "vaee"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    r = subprocess.run(["dvc", "repro", target], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert "error: params.yaml: model.kind='vaee' is invalid; choose one of" in r.stderr, r.stdout + r.stderr
    assert "Running stage 'model_params'" in r.stdout
    assert "Running stage 'train'" not in r.stdout and "Running stage 'sweep" not in r.stdout
    for path, body in OUTS.items():
        assert (repo / path).read_bytes() == body, path
