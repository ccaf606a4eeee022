"""Stage scripts: bad input is one line on stderr, exit 1, before Ray starts."""
import os
import subprocess
import sys

from tests.conftest import ROOT


def run_stage(script, *args, cwd):
    """`python -m stages.<script>`, as dvc.yaml runs it, from another folder: the
    project root on PYTHONPATH stands in for the working directory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"stages.{script.removesuffix('.py')}", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_unknown_param_key(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  moe_vae:\n    expertz: 3\n")
    r = run_stage("train.py", "--shards", "s", "--model", "m.pt", "--live", "live",
                  "--record", "r.json", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: params.yaml: unknown key 'model.moe_vae.expertz'; known are " + r.stderr.split("known are ")[1].strip()]
    assert "ray" not in r.stdout.lower()


def test_out_of_range_value(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  moe_vae:\n    experts: 0\n")
    r = run_stage("prepare.py", "--out", "shards", cwd=tmp_path)
    assert r.returncode == 1 and "model.moe_vae.experts=0" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_missing_shards(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    r = run_stage("train.py", "--shards", "nowhere", "--model", "m.pt", "--live", "live",
                  "--record", "r.json", cwd=tmp_path)
    assert r.returncode == 1 and "run the prepare stage first" in r.stderr
    assert not (tmp_path / "m.pt").exists()


def test_missing_model_for_evaluate(tmp_path, tiny_shards):
    (tmp_path / "params.yaml").write_text("{}\n")
    r = run_stage("evaluate.py", "--shards", str(tiny_shards), "--model", "m.pt", "--live", "live",
                  cwd=tmp_path)
    assert r.returncode == 1 and "run the train stage first" in r.stderr
    assert not (tmp_path / "live").exists()


def test_an_unknown_preset_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "params").mkdir()
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments/index.yaml").write_text(
        __import__("pipeline.experiments.index", fromlist=["render"]).render(
            {"presets": {}, "runs": {}}))
    r = run_stage("evaluate.py", "--preset", "gmm_vae", "--shards", "s",
                  "--model", "m.pt", "--live", "live", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == ("error: preset params/gmm_vae.yaml not found; "
                                                      "create it or fix the name")


def test_a_stale_index_is_one_line_naming_the_fix(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "params").mkdir()
    (tmp_path / "params/p.yaml").write_text("seeds: [0]\noverrides: {train.epochs: 2}\n")
    r = run_stage("train.py", "--preset", "p", "--shards", "s", "--model", "m.pt", "--live", "live",
                  "--record", "r.json", cwd=tmp_path)
    assert r.returncode == 1 and "experiments/index.yaml is missing" in r.stderr
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments/index.yaml").write_text("presets: {}\n")
    r = run_stage("train.py", "--preset", "p", "--shards", "s", "--model", "m.pt", "--live", "live",
                  "--record", "r.json", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: experiments/index.yaml is out of date with params/; run "
        "`python -m pipeline.experiments.index` and commit both")


def test_table_names_the_missing_index(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    r = run_stage("table.py", "--runs", "m", "--archive", "a", "--markdown", "t.md", "--csv", "t.csv",
                  cwd=tmp_path)
    assert r.returncode == 1 and "python -m pipeline.experiments.index" in r.stderr
    assert not (tmp_path / "t.md").exists()


def test_yaml_syntax_error_is_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("model:\n  kind: [vae\n")
    r = run_stage("prepare.py", "--out", "shards", cwd=tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "params.yaml: line 3" in r.stderr or "params.yaml: line 2" in r.stderr


def test_a_truncated_model_file_is_one_line(tmp_path, tiny_shards):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "m.pt").write_bytes(b"PK\x03\x04 not really a zip")
    r = run_stage("evaluate.py", "--shards", str(tiny_shards), "--model", "m.pt", "--live", "live",
                  cwd=tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "m.pt is not a model file of this project" in r.stderr and not (tmp_path / "live").exists()
