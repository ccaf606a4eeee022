"""The user's loop in a scratch git repo: dvc repro, nothing-to-do, param change, diff."""
import json
import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def sh(cmd, cwd, timeout=900):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture
def repo(tmp_path, mnist_dir):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo)
    shutil.copy(ROOT / ".dvcignore", repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(raw_dir=str(mnist_dir), shards=2, train_limit=600)
    params["model"].update(experts=3, hidden=32, latent_dim=4)
    params["train"].update(epochs=1, batch_size=50, num_workers=1)
    params["evaluate"].update(iw_samples=20, iw_chunk=20, ll_limit=100)
    # Two kinds keep CI short; the stages have no kind-specific code, and test_models
    # covers every kind. One with k-means clustering, one with a cluster variable.
    params["compare"].update(kinds=["mmd_vae", "gmm_vae"], overrides={"train.epochs": 1})
    params["tune"].update(num_samples=2, epochs=1, val_rows=100, val_iw_samples=4,
                          max_concurrent_trials=1)  # `dvc repro` runs the tune stage too
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/.ray_results/\n__pycache__/\n")
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q", repo)
    sh("git add -A && git commit -qm init", repo)
    return repo


def test_repro_metrics_noop_and_diff(repo):
    out = sh("dvc repro", repo)
    assert "cluster_accuracy" in out
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    for key in ("cluster_accuracy", "nmi", "ari", "test_log_likelihood"):
        assert key in metrics
    assert 0 <= metrics["cluster_accuracy"] <= 1 and metrics["test_log_likelihood"] < 0
    for f in ("component_samples.png", "reconstructions.png", "confusion.png", "confusion.csv",
              "samples.png", "latent.png", "latent.csv", "morph.png"):
        assert (repo / "plots/evaluate" / f).stat().st_size > 0
    assert (repo / "plots/train/components_over_epochs.png").stat().st_size > 0
    table = (repo / "compare/table.md").read_text().splitlines()
    assert table[0].startswith("| kind | cluster_accuracy") and len(table) >= 4
    assert [line.split("|")[1].strip() for line in table[2:4]] == ["mmd_vae", "gmm_vae"]
    for kind in ("mmd_vae", "gmm_vae"):
        assert json.loads((repo / f"metrics/compare/{kind}/train.json").read_text())["epochs"] == 1
        assert (repo / f"plots/compare/{kind}/evaluate/latent.png").exists()
    tune = json.loads((repo / "metrics/tune.json").read_text())  # the tune stage ran too
    assert tune["trials"] == 2 and (repo / "sweep/best_params.yaml").exists()
    shown = json.loads(sh("dvc metrics show --json", repo))
    assert "test_log_likelihood" in json.dumps(shown)

    assert "Data and pipelines are up to date" in sh("dvc status", repo)
    again = sh("dvc repro", repo)
    assert "Running stage" not in again

    sh("git add -A && git commit -qm run1", repo)
    text = (repo / "params.yaml").read_text().replace("balancing_weight: 0.1", "balancing_weight: 1.0")
    (repo / "params.yaml").write_text(text)
    out = sh("dvc repro evaluate", repo)  # the main model only; compare_* would rerun too
    assert "Running stage 'train'" in out and "Running stage 'prepare'" not in out
    sh("git add -A && git commit -qm run2", repo)
    diff = json.loads(sh("dvc metrics diff HEAD~1 HEAD --json", repo))
    changed = diff["metrics/evaluate.json"]
    assert "cluster_accuracy" in changed and changed["cluster_accuracy"]["diff"] != 0
    pdiff = json.loads(sh("dvc params diff HEAD~1 HEAD --json", repo))
    bw = pdiff["params.yaml"]["model.balancing_weight"]
    assert (bw["old"], bw["new"]) == (0.1, 1.0)
    sh("dvc plots show -o plots_html", repo)
    assert (repo / "plots_html" / "index.html").exists()


def test_results_pipeline_fills_the_readme_table(repo):
    """results/dvc.yaml: a preset over two seeds -> table.md, pasted into README.md."""
    shutil.copytree(ROOT / "results", repo / "results", ignore=shutil.ignore_patterns("runs", "table.*"))
    (repo / "params").mkdir()
    (repo / "params" / "tiny.yaml").write_text(yaml.safe_dump({
        "description": "tiny IMSAT manager", "overrides": {
            "model.likelihood": "bernoulli", "model.manager_hidden": [16],
            "model.entropy_weight": 1.0, "model.marginal_entropy_weight": 4.0,
            "model.consistency_weight": 1.0, "model.augment_weight": 1.0}}))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["results"] = {"presets": ["tiny"], "seeds": [0, 1], "overrides": {"train.epochs": 1}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "README.md").write_text("# x\n<!-- results-table:begin -->\n<!-- results-table:end -->\n")
    sh("git add -A && git commit -qm results", repo)
    out = sh("dvc repro results/dvc.yaml", repo)
    assert "Running stage 'prepare'" in out and "Running stage 'train'" not in out  # own runs only
    table = (repo / "results/table.md").read_text()
    assert "| tiny | moe_vae | tiny IMSAT manager |" in table and "(n=2)" in table
    assert table in (repo / "README.md").read_text()
    for seed in (0, 1):
        train = json.loads((repo / f"results/runs/tiny/seed{seed}/train.json").read_text())
        assert train["epochs"] == 1 and "worker" in train["hardware"]
        assert "manager_loss" in train["final"]
    assert "Data and pipelines are up to date" in sh("dvc status results/dvc.yaml", repo)
