"""Presets (params/<name>.yaml) and the table of an experiment set built from its runs."""
import json

import pytest
import yaml

from pipeline.core.errors import ConfigError, DataError
from pipeline.experiments.presets import load_preset
from pipeline.experiments.table import markdown, run_dir, write_table
from pipeline.params import load_params, params_from_dict, variant
from tests.conftest import ROOT


def test_committed_presets_build_valid_params():
    params = load_params(ROOT / "params.yaml")
    for set_name in ("compare", "results"):
        for name in getattr(params, set_name).presets:
            description, _ = load_preset(ROOT / "params" / f"{name}.yaml")
            assert description and variant(params, set_name, name, 2).train.seed == 2
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["results"].update(presets=sorted(p.stem for p in (ROOT / "params").glob("*.yaml")),
                          presets_dir=str(ROOT / "params"))
    every = params_from_dict(raw)
    for name in every.results.presets:  # also the ones no set lists today
        variant(every, "results", name, 0)


def presets(tmp_path, body):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(body))
    return params_from_dict({"results": {"presets": ["p"], "seeds": [0, 1],
                                         "presets_dir": str(tmp_path),
                                         "overrides": {"train.epochs": 1}}})


@pytest.mark.parametrize("body, needle", [
    ({"overrides": {"model.moe_vae.expert": 3}}, "unknown key 'model.moe_vae.expert'"),
    ({"overrides": {"model.experts": 3}}, "unknown key 'model.experts'"),
    ({"overides": {}}, "use only the keys 'description' and 'overrides'"),
    ({"overrides": {"experts": 3}}, "p.yaml: overrides="),
])
def test_bad_presets_are_one_line_errors(tmp_path, body, needle):
    params = presets(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        variant(params, "results", "p", seed=0)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_preset_that_is_not_yaml_is_one_line(tmp_path):
    (tmp_path / "p.yaml").write_text("overrides: {a: [1\n")
    params = params_from_dict({"results": {"presets": ["p"], "presets_dir": str(tmp_path)}})
    with pytest.raises(ConfigError, match="p.yaml: not valid YAML") as e:
        variant(params, "results", "p", seed=0)
    assert "\n" not in str(e.value)


def test_table_aggregates_seeds(tmp_path):
    params = presets(tmp_path, {"description": "tiny recipe",
                                "overrides": {"model.likelihood.name": "bernoulli"}})
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match="dvc repro results/dvc.yaml"):
        write_table(params, "results", runs, tmp_path / "t.md", tmp_path / "t.csv")
    assert not (tmp_path / "t.md").exists()
    for seed, acc, ll in ((0, 0.9, -90.0), (1, 0.8, -92.0)):
        d = run_dir(runs, "p", seed)
        (d / "train").mkdir(parents=True)
        (d / "evaluate").mkdir()
        (d / "train/metrics.json").write_text(json.dumps({"epochs": 1, "loss": 100.0, "step": 1}))
        (d / "train_run.json").write_text(json.dumps({"train_seconds": 120 + seed * 60,
                                                      "hardware": "1 worker x CPU (2 threads)"}))
        (d / "evaluate/metrics.json").write_text(json.dumps({"cluster_accuracy": acc, "nmi": 0.5 + seed / 10,
                                                     "test_log_likelihood": ll,
                                                     "ll_images": 100, "iw_samples": 5000}))
        if seed == 0:  # one seed of two run: a row over it, marked, not an error
            table = write_table(params, "results", runs, tmp_path / "t.md", tmp_path / "t.csv")
            assert "| 0.9000 (n=1 of 2) | 0.5000 | 90.00 |" in table  # one run: no ± 0
    table = write_table(params, "results", runs, tmp_path / "t.md", tmp_path / "t.csv")
    assert ("| p | moe_vae | tiny recipe | 0.8500 ± 0.0707 (n=2) | 0.5500 | 91.00 ± 1.41 | "
            "bernoulli (100 images × 5000 samples) | 1 | 2.5 | 1 worker x CPU (2 threads) |") in table
    assert (tmp_path / "t.md").read_text() == table
    header, row = (tmp_path / "t.csv").read_text().splitlines()
    assert header.startswith("preset,kind,recipe,seeds,cluster_accuracy_mean,cluster_accuracy_std")
    assert row.startswith("p,moe_vae,tiny recipe,2,0.85")
    assert markdown([]).count("\n") == 2  # header and rule only


def test_committed_results_table_is_the_stage_output():
    """Nobody types numbers into the table: results/table.md is what the table stage
    writes from the committed per-run metrics."""
    import tempfile
    from pathlib import Path

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["results"]["presets_dir"] = str(ROOT / "params")
    params = params_from_dict(raw)
    with tempfile.TemporaryDirectory() as d:
        table = write_table(params, "results", ROOT / "results" / "runs", Path(d) / "t.md", Path(d) / "t.csv")
    assert (ROOT / "results" / "table.md").read_text() == table


def test_readme_headline_numbers_come_from_the_results_table():
    """The README quotes the table; every `mean ± std` it quotes must be in it."""
    import re

    readme = (ROOT / "README.md").read_text()
    headline = readme.split("## Headline results")[1].split("\n## ")[0]
    quoted = re.findall(r"\d+\.\d+ ± \d+\.\d+", headline)
    assert len(quoted) >= 4
    table = (ROOT / "results" / "table.md").read_text()
    assert [q for q in quoted if q not in table] == []
