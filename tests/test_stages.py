"""Stage scripts: bad input is one line on stderr, exit 1, before Ray starts."""
import subprocess
import sys

from tests.conftest import ROOT


def run_stage(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_unknown_param_key(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  expertz: 3\n")
    r = run_stage("train.py", "--shards", "s", "--model", "m.pt", "--curves", "c.csv",
                  "--metrics", "t.json", "--snapshots", "s.png", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: params.yaml: unknown key 'model.expertz'; known are " + r.stderr.split("known are ")[1].strip()]
    assert "ray" not in r.stdout.lower()


def test_out_of_range_value(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  experts: 0\n")
    r = run_stage("prepare.py", "--out", "shards", cwd=tmp_path)
    assert r.returncode == 1 and "model.experts=0" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_shards(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    r = run_stage("train.py", "--shards", "nowhere", "--model", "m.pt", "--curves", "c.csv",
                  "--metrics", "t.json", "--snapshots", "s.png", cwd=tmp_path)
    assert r.returncode == 1 and "run the prepare stage first" in r.stderr
    assert not (tmp_path / "m.pt").exists()


def test_missing_model_for_evaluate(tmp_path, tiny_shards):
    (tmp_path / "params.yaml").write_text("{}\n")
    r = run_stage("evaluate.py", "--shards", str(tiny_shards), "--model", "m.pt", "--metrics",
                  "e.json", "--plots", "p", cwd=tmp_path)
    assert r.returncode == 1 and "run the train stage first" in r.stderr
    assert not (tmp_path / "e.json").exists()


def test_compare_kind_must_be_listed(tmp_path):
    (tmp_path / "params.yaml").write_text("compare:\n  kinds: [vae]\n")
    r = run_stage("evaluate.py", "--kind", "gmm_vae", "--shards", "s", "--model", "m.pt",
                  "--metrics", "e.json", "--plots", "p", cwd=tmp_path)
    assert r.returncode == 1 and "'gmm_vae' is not in compare.kinds=['vae']" in r.stderr


def test_compare_table_names_the_missing_run(tmp_path):
    (tmp_path / "params.yaml").write_text("compare:\n  kinds: [vae]\n")
    r = run_stage("compare.py", "--metrics-dir", "m", "--markdown", "t.md", "--csv", "t.csv",
                  cwd=tmp_path)
    assert r.returncode == 1 and "vae/train.json is missing" in r.stderr
    assert not (tmp_path / "t.md").exists()


def test_compare_table_from_per_kind_metrics(tmp_path):
    import json

    for kind, acc in (("vae", 0.5), ("gmm_vae", 0.75)):
        d = tmp_path / "m" / kind
        d.mkdir(parents=True)
        (d / "train.json").write_text(json.dumps({"epochs": 2, "train_seconds": 12.3, "parameters": 1234}))
        (d / "evaluate.json").write_text(json.dumps({"cluster_accuracy": acc, "nmi": 0.4, "ari": 0.3,
                                                     "test_log_likelihood": -100.0,
                                                     "test_log_likelihood_sem": 0.5}))
    (tmp_path / "params.yaml").write_text("compare:\n  kinds: [vae, gmm_vae]\n")
    r = run_stage("compare.py", "--metrics-dir", "m", "--markdown", "t.md", "--csv", "t.csv",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].startswith("kind,cluster_accuracy,nmi,ari,test_log_likelihood")
    assert rows[2].startswith("gmm_vae,0.75,")
    assert "| gmm_vae | 0.7500 | 0.4000 | 0.3000 | -100.00 | 0.50 | 2 | 12 | 1,234 |" in (tmp_path / "t.md").read_text()
