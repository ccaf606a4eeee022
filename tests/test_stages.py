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
                  "--metrics", "t.json", cwd=tmp_path)
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
                  "--metrics", "t.json", cwd=tmp_path)
    assert r.returncode == 1 and "run the prepare stage first" in r.stderr
    assert not (tmp_path / "m.pt").exists()


def test_missing_model_for_evaluate(tmp_path, tiny_shards):
    (tmp_path / "params.yaml").write_text("{}\n")
    r = run_stage("evaluate.py", "--shards", str(tiny_shards), "--model", "m.pt", "--metrics",
                  "e.json", "--plots", "p", cwd=tmp_path)
    assert r.returncode == 1 and "run the train stage first" in r.stderr
    assert not (tmp_path / "e.json").exists()
