"""The user's loop in scratch git repos: each pipeline with `dvc repro`, nothing-to-do,
narrow dependencies, a param change and its diff, push/pull through the default remote,
and a new model kind added as one module plus its params block."""
import json
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

COPIED = ["pipeline", "stages", "params", "dvc.yaml", "experiments/dvc.yaml", "experiments/index.yaml",
          "experiments/archive", "sweep/dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config"]
# Tiny presets in place of params/: the experiments pipeline on e2e data in seconds.
TINY_PRESETS = {
    "tiny_vae": {"description": "a tiny VAE", "seeds": [0], "overrides": {
        "model.kind": "vae", "model.net.hidden": 32, "model.net.latent_dim": 4,
        "model.likelihood.name": "bernoulli", "train.epochs": 1, "train.batch_size": 50,
        "evaluate.iw_samples": 20, "evaluate.iw_chunk": 20, "evaluate.ll_limit": 100}},
    "tiny_moe": {"description": "a tiny MoE-VAE whose manager reads the cached neighbours",
                 "extends": "tiny_vae", "seeds": [0, 1], "overrides": {
                     "model.kind": "moe_vae", "model.moe_vae.experts": 3,
                     "model.moe_vae.manager.hidden": [32], "model.moe_vae.manager.consistency_weight": 10,
                     "model.moe_vae.manager.consistency_radius": "knn"}},
    "tiny_hmoe": {"description": "a tiny hierarchical MoE-VAE", "extends": "tiny_vae", "seeds": [0],
                  "overrides": {"model.kind": "hmoe_vae", "model.hmoe_vae.experts": 2,
                                "model.hmoe_vae.sub_experts": 2}},
    "tiny_recipe": {"description": "a recipe with no seeds: no run", "extends": "tiny_vae"},
    # sweep/dvc.yaml's preset sweep, on the tiny data: 2 trials of 1 epoch
    "sweep_gmm_vae": {"description": "a tiny sweep of the mixture prior's components",
                      "extends": "tiny_vae", "overrides": {
                          "model.kind": "gmm_vae", "tune.space": {"model.gmm_vae.components": {"grid": [2, 3]}},
                          "tune.search": "grid", "tune.scheduler": "fifo", "tune.num_samples": 1,
                          "tune.epochs": 1, "tune.val_rows": 100, "tune.val_iw_samples": 4,
                          "tune.max_concurrent_trials": 1}},
}


def sh(cmd, cwd, timeout=900):
    # PYTHONPATH: the stages import the copy's pipeline/, not the installed one
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(cwd),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def edit_params(repo, change):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(repo):
    """The project's pipeline files and params.yaml into a scratch folder `repo`."""
    for name in COPIED:
        src, dst = ROOT / name, repo / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    shutil.copy(ROOT / "params.yaml", repo)


@pytest.fixture
def repo(tmp_path, mnist_dir):
    repo = tmp_path / "repo"
    copy_project(repo)

    def tiny(p):
        p["data"].update(raw_dir=str(mnist_dir), shards=2, train_limit=600)
        p["model"]["moe_vae"]["experts"] = 3
        p["model"]["net"].update(hidden=32, latent_dim=4)
        p["train"].update(epochs=1, batch_size=50)
        p["evaluate"].update(iw_samples=20, iw_chunk=20, ll_limit=100)
        p["tune"].update(num_samples=2, epochs=1, val_rows=100, val_iw_samples=4,
                         max_concurrent_trials=1)
    edit_params(repo, tiny)
    shutil.rmtree(repo / "params")
    (repo / "params").mkdir()
    for name, body in TINY_PRESETS.items():
        (repo / "params" / f"{name}.yaml").write_text(yaml.safe_dump(body))
    sh("python -m pipeline.experiments.index", repo)
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q -f", repo)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # dvc init wrote an empty one
    sh("git add -A && git commit -qm init", repo)
    return repo


def test_main_job_repro_narrow_deps_diff_and_remote(repo, tmp_path):
    out = sh("dvc repro", repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"prepare", "neighbours", "model_params", "train", "evaluate"}  # the main job only
    metrics = json.loads((repo / "dvclive/evaluate/metrics.json").read_text())
    assert 0 <= metrics["cluster_accuracy"] <= 1 and metrics["test_log_likelihood"] < 0
    for f in ("images/component_samples.png", "images/reconstructions.png", "images/samples.png",
              "images/latent.png", "images/morph.png", "sklearn/confusion_matrix.json", "custom/latent.json"):
        assert (repo / "dvclive/evaluate/plots" / f).stat().st_size > 0
    assert (repo / "dvclive/train/plots/images/components_over_epochs.png").stat().st_size > 0
    tracked = sh("git add -A && git ls-files", repo).split()
    assert {"dvclive/train/metrics.json", "dvclive/evaluate/metrics.json", "dvc.lock"} <= set(tracked)
    assert not [f for f in tracked if f.endswith((".png", ".pt", ".tsv")) or "/plots/" in f]
    sh("git commit -qm run1", repo)

    # dvc exp show: the evaluation metrics and the training losses, from dvclive's summaries
    exp = json.loads(sh("dvc exp show --json", repo))[0]["data"]["metrics"]
    assert {"cluster_accuracy", "nmi", "test_log_likelihood"} <= set(exp["dvclive/evaluate/metrics.json"]["data"])
    assert {"loss", "expected_expert_loss", "balancing_loss", "epochs"} <= set(exp["dvclive/train/metrics.json"]["data"])
    # dvc plots show: the curves, the per-expert samples of each epoch, the confusion matrix
    shown = json.loads(sh("dvc plots show dvc.yaml --json", repo))
    assert not shown.get("errors") and {
        "dvclive/train/plots/metrics/loss.tsv", "dvclive/evaluate/plots/sklearn/confusion_matrix.json",
        "dvclive/evaluate/plots/custom/latent.json", "dvclive/train/plots/images/components/1.png",
        "dvclive/train/plots/images/components_over_epochs.png"} <= set(shown["data"])

    # Narrow dependencies: code the main job does not run, and where checkpoints go.
    for module in ("pipeline/sweep/run.py", "pipeline/cluster/job.py", "pipeline/experiments/table.py",
                   "pipeline/paramdoc.py", "pipeline/params/tune.py"):
        with open(repo / module, "a") as f:
            f.write("\n# an edit the main job must not notice\n")
    edit_params(repo, lambda p: p["train"].update(storage_path="elsewhere", max_failures=3))
    assert "Data and pipelines are up to date" in sh("dvc status dvc.yaml", repo)
    edit_params(repo, lambda p: p["model"]["vae"].update(importance_samples=7))  # another kind's block
    ran = [line for line in sh("dvc repro", repo).splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'model_params':"]  # which writes the same active block
    assert "Data and pipelines are up to date" in sh("dvc status dvc.yaml", repo)
    sh("git checkout -q -- . && git status --short", repo)

    edit_params(repo, lambda p: p["model"]["moe_vae"].update(balancing_weight=1.0))
    with open(repo / "pipeline/data/load.py", "a") as f:  # the shard reader: train's, not prepare's
        f.write("\n# an edit prepare must not notice\n")
    out = sh("dvc repro", repo)
    assert "Running stage 'train'" in out and "Running stage 'prepare'" not in out
    sh("git add -A && git commit -qm run2", repo)
    changed = json.loads(sh("dvc metrics diff HEAD~1 HEAD --json", repo))["dvclive/train/metrics.json"]
    assert "loss" in changed and changed["loss"]["diff"] != 0
    bw = json.loads(sh("dvc params diff HEAD~1 HEAD --json", repo))["params.yaml"]["model.moe_vae.balancing_weight"]
    assert (bw["old"], bw["new"]) == (0.1, 1.0)
    sh("dvc plots show -o plots_html", repo)
    assert (repo / "plots_html" / "index.html").exists()

    # The default remote is a folder beside the project: push here, pull into a fresh clone.
    sh("dvc push", repo)
    assert (tmp_path / "moe-vae-dvc-remote").is_dir()
    clone = tmp_path / "clone"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    assert not (clone / "models/model.pt").exists()
    sh("dvc pull dvc.yaml", clone)  # a plain `dvc pull` also wants the pipelines never run here
    assert (clone / "models/model.pt").read_bytes() == (repo / "models/model.pt").read_bytes()
    assert (clone / "dvclive/evaluate/plots/images/latent.png").exists()
    assert "Data and pipelines are up to date" in sh("dvc status dvc.yaml", clone)


def stale_runs(repo):
    """The run stages `dvc status experiments/dvc.yaml` lists (the table follows the index)."""
    return {line.rstrip(":").split(":")[-1] for line in sh("dvc status experiments/dvc.yaml", repo).splitlines()
            if line.startswith("experiments/dvc.yaml:run@")}


def test_experiments_and_sweep_pipelines(repo):
    out = sh("dvc repro experiments/dvc.yaml", repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    runs = {f"experiments/dvc.yaml:{stage}@{r}" for r in ("tiny_vae-0", "tiny_moe-0", "tiny_moe-1", "tiny_hmoe-0")
            for stage in ("run", "validate")}
    assert ran == {"prepare", "neighbours", "experiments/dvc.yaml:table"} | runs  # not the main job
    table = (repo / "experiments/table.md").read_text()
    current, historical = table.split("## Historical")
    assert [line.split("|")[1].strip() for line in current.splitlines()[4:] if line] == [
        "tiny_hmoe", "tiny_moe", "tiny_vae"]  # tiny_recipe names no seeds: no row
    assert "| tiny_moe | moe_vae | a tiny MoE-VAE whose manager reads the cached neighbours |" in current
    assert "(n=2) |" in current and "historical @ " in historical  # the archive's rows
    runs_dir, cache = repo / "experiments/runs", repo / "experiments/cache"
    assert json.loads((runs_dir / "tiny_vae/seed0/train.json").read_text())["epochs"] == 1
    record = json.loads((runs_dir / "tiny_moe/seed1/train_run.json").read_text())
    assert "manager_loss" in json.loads((runs_dir / "tiny_moe/seed1/train.json").read_text())
    val = json.loads((runs_dir / "tiny_moe/seed1/validation.json").read_text())  # the last train rows
    assert 0 <= val["val_cluster_accuracy"] <= 1 and val["val_mutual_info"] >= 0
    assert "worker" in record["hardware"] and record["train_seconds"] > 0
    assert (cache / "tiny_moe/seed1/model.pt").exists()
    assert (cache / "tiny_vae/seed0/evaluate/plots/images/latent.png").exists()
    assert not (cache / "tiny_vae/seed0/train/metrics.json").exists()  # it is in git, under runs/
    hmoe = json.loads((runs_dir / "tiny_hmoe/seed0/evaluate.json").read_text())
    assert len(hmoe["sub_cluster_usage"]) == 2
    assert (cache / "tiny_hmoe/seed0/evaluate/plots/images/sub_expert_claims.png").exists()
    shown = json.loads(sh("dvc plots show experiments_accuracy experiments_nll --json", repo))
    assert set(shown["data"]) == {"experiments_accuracy", "experiments_nll"} and not shown.get("errors")

    # Editing a base preset makes exactly the runs built on it stale, once the index says so.
    sh("git add -A && git commit -qm runs", repo)
    body = yaml.safe_load((repo / "params/tiny_vae.yaml").read_text())
    body["overrides"]["model.net.latent_dim"] = 5
    (repo / "params/tiny_vae.yaml").write_text(yaml.safe_dump(body))
    sh("python -m pipeline.experiments.index", repo)
    stale = stale_runs(repo)
    assert stale == {"run@tiny_vae-0", "run@tiny_moe-0", "run@tiny_moe-1", "run@tiny_hmoe-0"}
    body = yaml.safe_load((repo / "params/tiny_hmoe.yaml").read_text())
    sh("git checkout -q -- params experiments/index.yaml", repo)
    body["overrides"]["model.hmoe_vae.sub_experts"] = 3
    (repo / "params/tiny_hmoe.yaml").write_text(yaml.safe_dump(body))
    r = subprocess.run("dvc repro experiments/dvc.yaml", cwd=repo, shell=True, text=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1",
                            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    assert r.returncode != 0 and "experiments/index.yaml is out of date with params/" in r.stdout + r.stderr
    assert (repo / "experiments/runs/tiny_hmoe/seed0/evaluate.json").exists()  # a failed rerun loses nothing
    assert (repo / "experiments/cache/tiny_hmoe/seed0/model.pt").exists()
    sh("python -m pipeline.experiments.index", repo)
    stale = stale_runs(repo)
    assert stale == {"run@tiny_hmoe-0"}
    sh("git checkout -q -- params experiments/index.yaml", repo)

    sh("dvc repro dvc.yaml sweep/dvc.yaml", repo)  # the main job too: dvc exp apply checks out its outputs
    tune = json.loads((repo / "sweep/metrics.json").read_text())
    assert tune["trials"] == 2 and (repo / "sweep/best_params.yaml").exists()
    assert set(tune["objectives"]) == {"val_log_likelihood", "val_mutual_info", "val_loss"}
    gmm = pd.read_csv(repo / "sweep/gmm_vae/table.csv")  # the preset sweep: the mixture count
    assert sorted(gmm["model.gmm_vae.components"]) == [2, 3] and set(gmm.status) == {"finished"}
    for pipeline in ("experiments/dvc.yaml", "sweep/dvc.yaml", "dvc.yaml"):
        status = sh(f"dvc status {pipeline}", repo)
        assert "Data and pipelines are up to date" in status or pipeline == "dvc.yaml", status

    # Every trial a DVC experiment, with its swept params and final metrics; apply the best.
    sh("python -m pipeline.sweep.exps && python -m pipeline.sweep.exps --sweep sweep/gmm_vae "
       "--preset sweep_gmm_vae", repo)
    assert "Data and pipelines are up to date" in sh("dvc status sweep/dvc.yaml", repo)  # lock untouched
    shown = json.loads(sh("dvc exp show --json", repo))
    exps = {rev["name"]: rev["data"] for e in shown if e["rev"] != "workspace"
            for exp in e.get("experiments") or [] for rev in exp["revs"]}
    table = pd.read_csv(repo / "sweep/table.csv")
    trials = {"sweep-" + t.rsplit("_", 1)[-1]: t for t in table.trial}
    assert set(exps) == set(trials) | {"sweep_gmm_vae-00000", "sweep_gmm_vae-00001"}
    swept = list(yaml.safe_load((repo / "params.yaml").read_text())["tune"]["space"])
    for name, trial in trials.items():
        row = table.set_index("trial").loc[trial]
        params = exps[name]["params"]["params.yaml"]["data"]
        for key in swept:
            section, *path = key.split(".")
            value = params[section]
            for k in path:
                value = value[k]
            assert value == pytest.approx(row[key]), (name, key)
        final = exps[name]["metrics"]["sweep/trial/metrics.json"]["data"]
        assert final["val_log_likelihood"] == pytest.approx(row["final_val_log_likelihood"])
    best = yaml.safe_load((repo / "sweep/best_params.yaml").read_text())
    best_trial = (repo / "sweep/best_params.yaml").read_text().split()[3].rstrip(":")
    sh(f"dvc exp apply sweep-{best_trial.rsplit('_', 1)[-1]}", repo)
    applied = yaml.safe_load((repo / "params.yaml").read_text())
    assert applied["model"]["moe_vae"] == {**applied["model"]["moe_vae"], **best["model"]["moe_vae"]}
    assert applied["model"]["net"]["latent_dim"] == best["model"]["net"]["latent_dim"]


def test_a_fresh_clone_after_dvc_repro_lists_only_what_the_remote_holds(repo, tmp_path):
    """The README's promise: clone, `dvc repro`, and `dvc status` shows only the
    experiment runs' and the sweeps' cached folders (one line each, `dvc pull` brings
    them); `dvc metrics show` and `dvc metrics diff` print no warning."""
    sh("dvc repro && dvc repro experiments/dvc.yaml sweep/dvc.yaml && git add -A && "
       "git commit -qm runs", repo)
    clone = tmp_path / "fresh"
    sh(f"git clone -q {repo} {clone}", tmp_path)
    sh("dvc repro", clone)  # the README's command: the main job
    status = sh("dvc status", clone).splitlines()
    assert len(status) <= 50, "\n".join(status)  # one screen
    listed, stage = {}, None
    for line in status:
        if not line.startswith("\t"):
            stage = line.rstrip(":")
            listed[stage] = []
        elif line.startswith("\t\t"):
            listed[stage].append(line.split())
    runs = {f"experiments/dvc.yaml:run@{r}" for r in ("tiny_hmoe-0", "tiny_moe-0", "tiny_moe-1", "tiny_vae-0")}
    validates = {run.replace(":run@", ":validate@") for run in runs}  # they read the run's model
    sweeps = {"sweep/dvc.yaml:tune": "sweep/plots", "sweep/dvc.yaml:tune_gmm_vae": "sweep/gmm_vae/plots"}
    assert set(listed) == runs | validates | set(sweeps), status  # the main job is done
    for validate in validates:  # only the model file, which the remote holds
        assert len(listed[validate]) == 1 and listed[validate][0][0] == "deleted:", status
        assert re.fullmatch(r"experiments/cache/.*/model\.pt", listed[validate][0][-1]), status
    for run in runs | set(sweeps):  # one cached folder each, nothing else pending
        folder = sweeps.get(run, "experiments/cache/")
        assert len(listed[run]) == 1 and listed[run][0][-1].startswith(folder), status
        assert listed[run][0][0] in ("not", "deleted:"), status
    for cmd in ("dvc metrics show", "dvc metrics diff"):
        r = subprocess.run(cmd, cwd=clone, shell=True, text=True, capture_output=True,
                           env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        # "DVC failed to load some metrics" (the sweeps' metrics have a key named "failed")
        assert r.returncode == 0 and "failed to load" not in (r.stdout + r.stderr).lower(), r.stderr
        assert "WARNING" not in r.stderr, r.stderr


BETA_VAE = '''"""beta-VAE (Higgins et al. 2017): the VAE with its KL term weighted by beta."""
from dataclasses import dataclass

from pipeline.core.errors import check
from pipeline.core.schema import param
from pipeline.models.base import Kind
from pipeline.models.kinds.vae import VAE


@dataclass(frozen=True)
class BetaVAEConfig:
    """beta-VAE."""
    beta: float = param(4.0, "weight of the KL term")
    importance_samples: int = param(1, "kept 1: the weighted ELBO")

    def __post_init__(self):
        check(self.beta > 0, "beta", self.beta, "use a number > 0")


class BetaVAE(VAE):
    def kl(self, mu, logvar, z):
        return self.spec.beta * super().kl(mu, logvar, z)


KIND = Kind("beta_vae", BetaVAEConfig, BetaVAE)
'''


def test_a_new_kind_is_one_module_plus_its_params_block(repo):
    (repo / "pipeline/models/kinds/beta_vae.py").write_text(BETA_VAE)
    edit_params(repo, lambda p: p["model"].update(kind="beta_vae", beta_vae={"beta": 2.0}))
    assert sh("git status --short", repo).split() == ["M", "params.yaml", "??", "pipeline/models/kinds/beta_vae.py"]
    sh("dvc repro evaluate", repo)
    metrics = json.loads((repo / "dvclive/evaluate/metrics.json").read_text())
    assert metrics["test_log_likelihood"] < 0 and len(metrics["cluster_usage"]) == 10  # k-means
    state = __import__("torch").load(repo / "models/model.pt", weights_only=True)
    assert state["kind"] == "beta_vae" and state["config"]["beta_vae"]["beta"] == 2.0
    edit_params(repo, lambda p: p["model"]["beta_vae"].update(beta=-1))
    r = subprocess.run("python -m stages.train --shards data/shards --model m.pt --live live "
                       "--record r.json", cwd=repo, shell=True, text=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": str(repo),
                                                 "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    assert r.returncode == 1 and r.stderr.strip() == ("error: params.yaml: model.beta_vae.beta=-1.0 "
                                                      "is invalid; use a number > 0")


def test_the_trained_model_file_clusters_and_draws_from_the_command_line(repo):
    """docs/using-a-model.md on the main job's models/model.pt: the CLI's clusters of the
    test shards are the evaluate stage's (its cluster_usage), PNGs of test images get the
    same rows, and `sample --n 8` draws evaluate's component_samples.png pixel for pixel."""
    import numpy as np
    from PIL import Image

    from pipeline.data.load import load_split

    sh("dvc repro", repo)
    shards = " ".join(sorted(str(p) for p in (repo / "data/shards").glob("test-*.parquet")))
    out = sh(f"python -m pipeline.inference cluster models/model.pt {shards} --out all.csv", repo)
    rows = pd.read_csv(repo / "all.csv")
    usage = json.loads((repo / "dvclive/evaluate/metrics.json").read_text())["cluster_usage"]
    assert len(rows) == 10_000 and out.startswith("cluster: 10000 images of a moe_vae model")
    assert {int(k): u for k, u in usage.items()} == pytest.approx(
        {k: float((rows.cluster == k).mean()) for k in range(len(usage))}, abs=1e-12)
    first = load_split(repo / "data/shards", "test").pixels[:20]  # (20, 784) uint8
    (repo / "pngs").mkdir()
    for i, px in enumerate(first):
        Image.fromarray(px.reshape(28, 28)).save(repo / "pngs" / f"{i:02d}.png")
    sh("python -m pipeline.inference cluster models/model.pt pngs --out pngs.csv", repo)
    pngs = pd.read_csv(repo / "pngs.csv")
    assert pngs.name.tolist() == [f"pngs/{i:02d}.png" for i in range(20)]
    assert pngs.cluster.tolist() == rows.cluster[:20].tolist()  # the manager reads grey pixels
    assert np.allclose(pngs.probability, rows.probability[:20], atol=1e-5)
    sh("python -m pipeline.inference sample models/model.pt --n 8 --out samples.png", repo)
    drawn = np.asarray(Image.open(repo / "samples.png"))
    evaluated = np.asarray(Image.open(repo / "dvclive/evaluate/plots/images/component_samples.png"))
    assert drawn.shape == (2 * (8 * 30 + 2), 2 * (3 * 30 + 2)) and (drawn == evaluated).all()
