"""pipeline.cluster.job without a cluster (a run in a copy stands in for the job's working
dir): the experiment round trip through a git remote and a DVC remote, the checks that
fail before training, and pipeline.core.storage's paths vs URIs."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core import storage
from tests.conftest import ROOT

DVC_YAML = textwrap.dedent("""
    stages:
      fit:
        cmd: python fit.py
        deps: [fit.py]
        params: [p]
        outs: [model.bin]
        metrics: [{metrics.json: {cache: false}}]
""")
FIT = "import json, yaml\np = yaml.safe_load(open('params.yaml'))['p']\n" \
      "open('model.bin', 'w').write('w' * p)\njson.dump({'score': p / 10}, open('metrics.json', 'w'))\n"


def sh(cmd: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    # dvc.yaml's `python` must be this interpreter, as on a cluster whose PATH leads to it
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0 or not ok, f"{cmd}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture
def project(tmp_path):
    """A committed DVC project with a git remote (bare repo) and a DVC remote (folder)."""
    repo, dvc_remote = tmp_path / "repo", tmp_path / "dvc-remote"
    repo.mkdir()
    dvc_remote.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "fit.py").write_text(FIT)
    (repo / "params.yaml").write_text("p: 3\n")
    sh(f"git init -q --bare {tmp_path / 'origin.git'}", tmp_path)
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q && "
       f"dvc remote add -d shared {dvc_remote} && git remote add origin {tmp_path / 'origin.git'} && "
       "git add -A && git commit -qm init && git push -q origin HEAD", repo)
    return repo


def upload(repo: Path, dest: Path) -> Path:
    """What Ray's working_dir upload carries: the tree with .git, less git-ignored paths."""
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    return dest


def test_the_job_runs_an_experiment_that_dvc_exp_pull_brings_back(project, tmp_path):
    cluster = upload(project, tmp_path / "cluster")
    out = sh(f"{sys.executable} -m pipeline.cluster.job run1 -- -S p=5", cluster).stdout
    copy = Path(out.split("job: dvc exp run --name run1 in ", 1)[1].split()[0])
    assert copy.name == "run1" and not copy.parent.exists()  # ran in a fresh copy, then tidied
    assert not (cluster / "model.bin").exists()  # Ray's unpacked upload stays as it came

    sh("dvc exp pull origin run1 && dvc exp apply run1", project)
    assert (project / "model.bin").read_text() == "w" * 5  # from the DVC remote
    assert json.loads((project / "metrics.json").read_text()) == {"score": 0.5}
    assert "fit" in (project / "dvc.lock").read_text()
    diff = json.loads(sh("dvc metrics diff --json", project).stdout)
    assert diff["metrics.json"]["score"]["new"] == 0.5


def test_a_sweep_job_brings_each_trial_back_as_an_experiment(project, tmp_path):
    """`--trials sweep`: what a sweep's driver wrote on the cluster becomes one experiment
    a trial, pushed beside the run's (a stand-in stage writes the sweep's outputs)."""
    import pandas as pd

    from tests.test_sweep_exps import CURVES, TABLE

    fake = tmp_path / "fake_sweep"
    fake.mkdir()
    pd.DataFrame(TABLE).to_csv(fake / "table.csv", index=False)
    pd.DataFrame(CURVES).to_csv(fake / "curves.csv", index=False)
    (project / "params.yaml").write_text("p: 3\nmodel:\n  net:\n    latent_dim: 20\n"
                                         "  moe_vae:\n    balancing_weight: 0.1\n")
    (project / "dvc.yaml").write_text(DVC_YAML.replace("stages:", f"""stages:
  tune:
    cmd: mkdir -p sweep/plots && cp {fake}/table.csv sweep/ && cp {fake}/curves.csv sweep/plots/
    outs: [{{sweep/table.csv: {{cache: false}}}}, {{sweep/plots/curves.csv: {{cache: false}}}}]"""))
    sh("dvc repro fit && dvc push -q && git add -A && git commit -qm sweep && git push -q origin HEAD",
       project)
    cluster = upload(project, tmp_path / "cluster")
    sh(f"{sys.executable} -m pipeline.cluster.job sw1 --trials sweep -- tune", cluster)

    listed = sh("dvc exp list origin --name-only", project).stdout.split()
    assert {"sw1", "sw1-00000", "sw1-00001", "sw1-00002"} <= set(listed)
    sh("dvc exp pull origin sw1-00001 && dvc exp apply sw1-00001", project)
    assert "balancing_weight: 0.5" in (project / "params.yaml").read_text()
    assert json.loads((project / "sweep/trial/metrics.json").read_text())["cluster_accuracy"] == 0.9


@pytest.mark.parametrize("breakage, message", [
    ("rm -rf .git", "RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES"),
    ("dvc remote modify shared url ../../moe-vae-dvc-remote", "does not exist there"),
    ("dvc remote remove shared", "no default DVC remote"),
    ("git remote set-url origin /nonexistent/origin.git", "git remote 'origin' cannot be read"),
], ids=["no-git", "relative-dvc-remote", "no-dvc-remote", "bad-git-remote"])
def test_remotes_the_cluster_cannot_use_fail_before_training(project, tmp_path, breakage, message):
    cluster = upload(project, tmp_path / "cluster")
    sh(breakage, cluster)
    r = sh(f"{sys.executable} -m pipeline.cluster.job run1", cluster, ok=False)
    assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (cluster / "model.bin").exists()  # nothing ran


def test_a_missing_shared_dir_is_one_line(project, tmp_path):
    r = sh(f"{sys.executable} -m pipeline.cluster.job run1 --shared-dir {tmp_path / 'nope'}",
           upload(project, tmp_path / "cluster"), ok=False)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"error: --shared-dir {tmp_path / 'nope'} does not exist on the head; "
        f"give a folder every node mounts at the same path")


def test_storage_paths_and_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve_storage("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.resolve_storage("gs://b/p") == "gs://b/p"
    assert storage.resolve_storage(".ray_results") == str(tmp_path / ".ray_results")
    assert storage.join("s3://bucket/runs", "moe-1") == "s3://bucket/runs/moe-1"
    run = tmp_path / "runs/moe-1"
    (run / "checkpoint_0").mkdir(parents=True)
    assert storage.delete_tree(f"file://{run}") == "" and not run.exists()
    assert storage.delete_tree(str(run)) == ""  # already gone: fine
