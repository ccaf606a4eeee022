"""A finished sweep's trials as DVC experiments, in a scratch git repo (no Ray, no training):
`dvc exp show` lists each trial with its swept params and final metrics, and
`dvc exp apply` of the best puts its values in the params file the sweep read."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

PARAMS = """\
model:
  net:
    latent_dim: 20   # a comment dvc exp apply must keep
  moe_vae:
    balancing_weight: 0.1
train:
  lr: 0.001
"""
TABLE = [  # what the tune stage writes, trimmed to what the experiments read
    {"trial": "ab12_00000", "model.net.latent_dim": 8, "model.moe_vae.balancing_weight": 0.02,
     "status": "stopped", "epochs": 1, "error": ""},
    {"trial": "ab12_00001", "model.net.latent_dim": 20, "model.moe_vae.balancing_weight": 0.5,
     "status": "finished", "epochs": 2, "error": ""},
    {"trial": "ab12_00002", "model.net.latent_dim": 8, "model.moe_vae.balancing_weight": 0.9,
     "status": "failed", "epochs": 0, "error": "non-finite loss at epoch 1 step 3"},
]
CURVES = [
    {"trial": "ab12_00000", "epoch": 1, "val_log_likelihood": -130.0, "val_mutual_info": 1.1,
     "val_loss": 140.0, "cluster_accuracy": 0.5, "nmi": 0.4},
    {"trial": "ab12_00001", "epoch": 1, "val_log_likelihood": -120.0, "val_mutual_info": 1.9,
     "val_loss": 130.0, "cluster_accuracy": 0.8, "nmi": 0.7},
    {"trial": "ab12_00001", "epoch": 2, "val_log_likelihood": -110.0, "val_mutual_info": 2.1,
     "val_loss": 120.0, "cluster_accuracy": 0.9, "nmi": 0.8},
]


def sh(cmd, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def experiments(repo):
    """{experiment name: its data} from `dvc exp show --json`, for the HEAD baseline."""
    shown = json.loads(sh("dvc exp show --json", repo))
    head = next(e for e in shown if e["rev"] != "workspace")
    return {rev["name"]: rev["data"] for exp in head.get("experiments") or [] for rev in exp["revs"]}


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "sweep/plots").mkdir(parents=True)
    pd.DataFrame(TABLE).to_csv(tmp_path / "sweep/table.csv", index=False)
    pd.DataFrame(CURVES).to_csv(tmp_path / "sweep/plots/curves.csv", index=False)
    # the stage that wrote the sweep's outputs, with its lock: saving the trials must not
    # rewrite it with a trial's values
    (tmp_path / "dvc.yaml").write_text("stages:\n  tune:\n    cmd: 'true'\n    params: [model]\n"
                                       "    outs: [{sweep/table.csv: {cache: false}}]\n")
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q "
       "&& dvc commit -f -q tune && git add -A && git commit -qm init", tmp_path)
    return tmp_path


def test_each_trial_is_an_experiment_and_apply_takes_the_best_ones_params(repo):
    out = sh("python -m pipeline.sweep.exps", repo)
    assert "3 trials saved as DVC experiments" in out
    assert (repo / "params.yaml").read_text() == PARAMS and not (repo / "sweep/trial").exists()
    assert sh("git status --short", repo) == ""  # the workspace as it was, dvc.lock included
    assert "up to date" in sh("dvc status", repo)

    exps = experiments(repo)
    assert set(exps) == {"sweep-00000", "sweep-00001", "sweep-00002"}
    best = exps["sweep-00001"]
    params = best["params"]["params.yaml"]["data"]
    assert params["model"]["net"]["latent_dim"] == 20 and params["model"]["moe_vae"]["balancing_weight"] == 0.5
    metrics = best["metrics"]["sweep/trial/metrics.json"]["data"]
    assert metrics["val_log_likelihood"] == -110.0 and metrics["cluster_accuracy"] == 0.9  # final row
    assert best["params"]["sweep/trial/params.yaml"]["data"]["status"] == "finished"
    failed = exps["sweep-00002"]["params"]["sweep/trial/params.yaml"]["data"]
    assert failed["status"] == "failed" and "non-finite loss" in failed["error"]
    assert exps["sweep-00000"]["params"]["params.yaml"]["data"]["model"]["net"]["latent_dim"] == 8

    sh("dvc exp apply sweep-00001", repo)
    applied = yaml.safe_load((repo / "params.yaml").read_text())
    assert applied["model"]["moe_vae"]["balancing_weight"] == 0.5
    assert "# a comment dvc exp apply must keep" in (repo / "params.yaml").read_text()


def test_a_preset_sweeps_trials_go_into_the_presets_overrides(repo):
    (repo / "params").mkdir()
    preset = "extends: gmm_vae\noverrides:\n  tune.epochs: 5\n"
    (repo / "params/sweep_x.yaml").write_text(preset)
    sh("git add -A && git commit -qm preset", repo)
    sh("python -m pipeline.sweep.exps --preset sweep_x", repo)
    assert (repo / "params/sweep_x.yaml").read_text() == preset
    exps = experiments(repo)
    assert set(exps) == {"sweep_x-00000", "sweep_x-00001", "sweep_x-00002"}
    sh("dvc exp apply sweep_x-00000", repo)
    overrides = yaml.safe_load((repo / "params/sweep_x.yaml").read_text())["overrides"]
    assert overrides == {"tune.epochs": 5, "model.net.latent_dim": 8,
                         "model.moe_vae.balancing_weight": 0.02}


def test_no_sweep_yet_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS)
    r = subprocess.run([sys.executable, "-m", "pipeline.sweep.exps"], cwd=tmp_path, text=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: sweep/table.csv not found; run the sweep first (dvc repro sweep/dvc.yaml)")
