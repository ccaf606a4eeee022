"""Presets (params/<name>.yaml) and the README results table built from the runs' metrics."""
import json

import pytest
import yaml

from pipeline.config import ConfigError, load_params, params_from_dict
from pipeline.data import DataError
from pipeline.presets import load_preset, preset_variant
from pipeline.results import BEGIN, END, markdown, results_rows, run_dir, write_readme_block
from tests.conftest import ROOT


def test_committed_presets_build_valid_params():
    params = load_params(ROOT / "params.yaml")
    for name in params.results.presets:
        description, over = load_preset(ROOT / "params" / f"{name}.yaml")
        assert description and over
    for path in sorted((ROOT / "params").glob("*.yaml")):
        p = preset_variant(params_from_dict({"results": {"presets_dir": str(ROOT / "params")}}),
                           path.stem, seed=2)
        assert p.train.seed == 2


def presets(tmp_path, body):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(body))
    return params_from_dict({"results": {"presets": ["p"], "seeds": [0, 1],
                                         "presets_dir": str(tmp_path),
                                         "overrides": {"train.epochs": 1}}})


def test_preset_then_results_overrides_then_seed(tmp_path):
    params = presets(tmp_path, {"description": "d", "overrides": {"train.epochs": 9,
                                                                 "model.experts": 4}})
    p = preset_variant(params, "p", seed=1)
    assert (p.model.experts, p.train.epochs, p.train.seed) == (4, 1, 1)


@pytest.mark.parametrize("body, needle", [
    ({"overrides": {"model.expert": 3}}, "unknown key 'model.expert'"),
    ({"overides": {}}, "use only the keys 'description' and 'overrides'"),
    ({"overrides": {"experts": 3}}, "p.yaml: overrides="),
])
def test_bad_presets_are_one_line_errors(tmp_path, body, needle):
    params = presets(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        preset_variant(params, "p", seed=0)
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="preset .*missing.yaml not found"):
        preset_variant(params, "missing", seed=0)


def test_table_aggregates_seeds_and_fills_the_readme(tmp_path):
    params = presets(tmp_path, {"description": "tiny recipe", "overrides": {"model.likelihood": "bernoulli"}})
    runs = tmp_path / "runs"
    with pytest.raises(DataError, match="dvc repro results/dvc.yaml"):
        results_rows(runs, params)
    for seed, acc, ll in ((0, 0.9, -90.0), (1, 0.8, -92.0)):
        d = run_dir(runs, "p", seed)
        d.mkdir(parents=True)
        (d / "train.json").write_text(json.dumps({"epochs": 1, "train_seconds": 120 + seed * 60,
                                                  "hardware": "1 worker x CPU (2 threads)"}))
        (d / "evaluate.json").write_text(json.dumps({"cluster_accuracy": acc, "test_log_likelihood": ll,
                                                     "ll_images": 100, "iw_samples": 5000}))
    [row] = results_rows(runs, params)
    assert row["cluster_accuracy_mean"] == pytest.approx(0.85)
    assert row["cluster_accuracy_std"] == pytest.approx(0.1 / 2 ** 0.5)  # sample std (n - 1)
    assert row["hardware"] == "1 worker x CPU (2 threads)"  # one entry per distinct machine
    assert (row["nll_mean"], row["nll_std"], row["train_minutes"]) == pytest.approx((91.0, 2 ** 0.5, 2.5))
    table = markdown([row])
    assert "| p | moe_vae | tiny recipe | 0.8500 ± 0.0707 (n=2) | 91.00 ± 1.41 | bernoulli" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nold numbers\n{END}\noutro\n")
    new = write_readme_block(readme, table)
    assert new.startswith("intro\n") and new.endswith(f"{END}\noutro\n")
    assert "old numbers" not in new and table in new
    readme.write_text("no markers\n")
    with pytest.raises(DataError, match="needs one"):
        write_readme_block(readme, table)


def test_readme_table_is_the_committed_stage_output():
    """Nobody types numbers into the README: its block equals results/table.md."""
    table = ROOT / "results" / "table.md"
    if not table.exists():
        pytest.skip("results/table.md not produced yet (dvc repro results/dvc.yaml)")
    readme = (ROOT / "README.md").read_text()
    assert f"{BEGIN}\n{table.read_text()}{END}" in readme
