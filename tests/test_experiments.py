"""Presets (params/<name>.yaml, `extends:` chains on the code's defaults), the generated
index of their runs, and the one table of current and historical rows."""
import json

import pytest
import yaml

from pipeline.core.errors import ConfigError, DataError
from pipeline.core.schema import to_dict
from pipeline.experiments.index import INDEX, build_index, read_index, render
from pipeline.experiments.presets import Preset, load_preset, resolve
from pipeline.experiments.runs import RUN_KEYS, run_params
from pipeline.experiments.table import compact, markdown, read_yaml, run_dir, table_rows, write_table
from pipeline.params import Params, load_params
from tests.conftest import ROOT

PARAMS = ROOT / "params"


def write(d, name, body):
    (d / f"{name}.yaml").write_text(yaml.safe_dump(body))


def test_the_committed_index_is_what_the_presets_say():
    assert (ROOT / INDEX).read_text() == render(build_index(PARAMS)), \
        "run `python -m pipeline.experiments.index` and commit experiments/index.yaml"
    read_index(ROOT / INDEX, PARAMS)


def test_the_main_job_is_its_preset_with_seed_0():
    """params.yaml runs moe_imsat_top1_imsat_aug: every key but where runs happen agrees."""
    main = load_params(ROOT / "params.yaml")
    run = run_params(main, load_preset("moe_imsat_top1_imsat_aug", PARAMS), 0)
    a, b = to_dict(main), to_dict(run)
    for section in ("model", "train", "evaluate"):
        assert a[section] == b[section], section


def test_presets_say_only_what_they_change():
    """No preset repeats a value its base already has, and no block is copied."""
    for path in sorted(PARAMS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        bases = raw.get("extends") or []
        bases = [bases] if isinstance(bases, str) else bases
        base = to_dict(run_params(Params(), Preset(path.stem, "", (), (), resolve(bases, PARAMS)[1]), 0))
        for key, value in (raw.get("overrides") or {}).items():
            node = base
            for part in key.split("."):
                node = node[part]
            assert node != value, f"{path.name}: {key}={value!r} repeats its base"


def test_extends_resolves_the_chain_and_later_files_win(tmp_path):
    write(tmp_path, "a", {"overrides": {"train.epochs": 3, "model.net.hidden": 16}})
    write(tmp_path, "b", {"extends": "a", "seeds": [1, 2], "overrides": {"train.epochs": 4}})
    b = load_preset("b", tmp_path)
    assert b.chain == ("a", "b") and b.seeds == (1, 2)
    run = run_params(load_params(ROOT / "params.yaml"), b, 2)
    assert (run.train.epochs, run.model.net.hidden, run.train.seed) == (4, 16, 2)
    assert run.model.likelihood.name == Params().model.likelihood.name  # not params.yaml's


def test_several_bases_apply_in_order_each_after_its_own_bases(tmp_path):
    """extends: [a, b]: every preset reached applies its own overrides once, each after its
    bases, so b (and then the file itself) wins, and a shared root does not undo a."""
    write(tmp_path, "root", {"overrides": {"train.epochs": 3, "train.lr": 0.01, "model.net.hidden": 16}})
    write(tmp_path, "a", {"extends": "root", "overrides": {"train.epochs": 4, "model.net.hidden": 32}})
    write(tmp_path, "b", {"extends": "root", "overrides": {"train.epochs": 5}})
    write(tmp_path, "frag", {"overrides": {"train.batch_size": 50}})
    write(tmp_path, "c", {"extends": ["a", "b", "frag"], "overrides": {"train.lr": 0.002}})
    c = load_preset("c", tmp_path)
    assert c.chain == ("root", "a", "b", "frag", "c")
    assert c.overrides == {"train.epochs": 5, "train.lr": 0.002, "model.net.hidden": 32,
                           "train.batch_size": 50}
    write(tmp_path, "c", {"extends": ["b", "a"]})  # the other order: a's epochs win
    assert load_preset("c", tmp_path).overrides["train.epochs"] == 4
    assert load_preset("c", tmp_path).chain == ("root", "b", "a", "c")


def test_each_file_along_a_chain_is_read_once(tmp_path, monkeypatch):
    """A diamond (c extends a and b, both extend root) reads four files, each once."""
    import pipeline.experiments.presets as presets
    write(tmp_path, "root", {"overrides": {"train.epochs": 3}})
    write(tmp_path, "a", {"extends": "root"})
    write(tmp_path, "b", {"extends": "root"})
    write(tmp_path, "c", {"extends": ["a", "b"], "seeds": [4]})
    read, real = [], presets.read_file
    monkeypatch.setattr(presets, "read_file", lambda path: read.append(path.stem) or real(path))
    c = load_preset("c", tmp_path)
    assert sorted(read) == ["a", "b", "c", "root"] and c.seeds == (4,)


def test_the_index_reads_each_preset_file_once(tmp_path, monkeypatch):
    """Presets sharing a base share its read, and each still resolves through it."""
    import pipeline.experiments.presets as presets
    write(tmp_path, "root", {"overrides": {"train.epochs": 3, "model.moe_vae.manager.hidden": [32, 32]}})
    write(tmp_path, "a", {"extends": "root", "seeds": [0]})
    write(tmp_path, "b", {"extends": "root", "overrides": {"train.epochs": 5}, "seeds": [1]})
    read, real = [], presets.read_file
    monkeypatch.setattr(presets, "read_file", lambda path: read.append(path.stem) or real(path))
    index = build_index(tmp_path)
    assert sorted(read) == ["a", "b", "root"]
    assert index["presets"]["b"]["chain"] == ["root", "b"] and index["presets"]["a"]["chain"] == ["root", "a"]
    assert index["presets"]["b"]["overrides"]["train.epochs"] == 5
    assert "&" not in render(index)  # no value shared between presets (a YAML anchor)


def test_the_warp_term_is_one_fragment_that_two_recipes_extend():
    warps = load_preset("manager_warps", PARAMS).overrides
    assert set(warps) == {f"model.moe_vae.manager.augment_{k}" for k in ("weight", "from", "shear", "stroke")}
    for name in ("moe_imsat_top1_imsat_aug", "moe_imsat_ll_shared_aug"):
        preset = load_preset(name, PARAMS)
        assert "manager_warps" in preset.chain and warps.items() <= preset.overrides.items()
        assert not set(warps) & set(yaml.safe_load((PARAMS / f"{name}.yaml").read_text())["overrides"])


def test_where_runs_happen_comes_from_params_yaml(tmp_path):
    write(tmp_path, "a", {"overrides": {"train.epochs": 3}})
    here = load_params(ROOT / "params.yaml", overrides={"train.threads": 3, "train.epochs": 9})
    run = run_params(here, load_preset("a", tmp_path), 0)
    assert run.train.threads == 3 and run.train.epochs == 3
    assert all(k.split(".")[0] in ("train", "evaluate") for k in RUN_KEYS)


def test_editing_a_base_changes_exactly_the_presets_built_on_it(tmp_path):
    for path in PARAMS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    before = build_index(tmp_path)["presets"]
    raw = yaml.safe_load((tmp_path / "moe_imsat_top1.yaml").read_text())
    raw["overrides"]["model.moe_vae.balancing_weight"] = 0.5
    write(tmp_path, "moe_imsat_top1", raw)
    after = build_index(tmp_path)["presets"]
    changed = {n for n in before if before[n]["overrides"] != after[n]["overrides"]}
    def own(name):  # the overrides a preset file itself says
        return yaml.safe_load((tmp_path / f"{name}.yaml").read_text()).get("overrides") or {}

    key = "model.moe_vae.balancing_weight"  # a preset that sets it below the base keeps its own
    users = {n for n, p in before.items() if "moe_imsat_top1" in p["chain"] and p["kind"] == "moe_vae"
             and not any(key in own(c) for c in p["chain"][p["chain"].index("moe_imsat_top1") + 1:])}
    assert changed == users and "moe_imsat_top1_imsat" in changed and "moe_imsat" not in changed
    assert "vae" not in changed  # a VAE on the main job's blocks reads no manager key


@pytest.mark.parametrize("files, needle", [
    ({"p": {"overrides": {"model.moe_vae.expert": 3}}}, "unknown key 'model.moe_vae.expert'"),
    ({"p": {"overides": {}}}, "use only the keys description, extends, seeds, overrides"),
    ({"p": {"overrides": {"experts": 3}}}, "p.yaml: overrides={'experts': 3} is invalid"),
    ({"p": {"seeds": [0, 0]}}, "p.yaml: seeds=[0, 0] is invalid"),
    ({"p": {"seeds": [[0]]}}, "p.yaml: seeds=[[0]] is invalid"),
    ({"p": {"extends": "q"}}, "preset " + "{d}/q.yaml not found"),
    ({"p": {"extends": "q"}, "q": {"extends": "p"}}, "preset p: extends loops (p -> q -> p)"),
    ({"p": {"extends": ["r", "q"]}, "r": {}, "q": {"extends": ["r", "p"]}}, "preset p: extends loops (p -> q -> p)"),
    ({"p": {"extends": ["q", "q"]}, "q": {}}, "p.yaml: extends=['q', 'q'] is invalid; name one preset"),
    ({"p": {"extends": []}}, "p.yaml: extends=[] is invalid"),
    ({"p": {"extends": {"q": 1}}}, "p.yaml: extends={'q': 1} is invalid"),
])
def test_bad_presets_are_one_line_errors(tmp_path, files, needle):
    for name, body in files.items():
        write(tmp_path, name, body)
    with pytest.raises(ConfigError) as e:
        build_index(tmp_path)
    assert needle.replace("{d}", str(tmp_path)) in str(e.value) and "\n" not in str(e.value)


def test_a_preset_that_is_not_yaml_is_one_line(tmp_path):
    (tmp_path / "p.yaml").write_text("overrides: {a: [1\n")
    with pytest.raises(ConfigError, match="p.yaml: not valid YAML") as e:
        load_preset("p", tmp_path)
    assert "\n" not in str(e.value)


def fake_run(d, acc, ll, seconds, current=True):
    (d / ("" if current else "train")).mkdir(parents=True, exist_ok=True)
    (d / ("" if current else "evaluate")).mkdir(parents=True, exist_ok=True)
    train = d / ("train.json" if current else "train/metrics.json")
    evaluate = d / ("evaluate.json" if current else "evaluate/metrics.json")
    train.write_text(json.dumps({"epochs": 1, "loss": 100.0}))
    (d / "train_run.json").write_text(json.dumps({"train_seconds": seconds,
                                                  "hardware": "1 worker x CPU (2 threads)"}))
    evaluate.write_text(json.dumps({"cluster_accuracy": acc, "nmi": 0.5, "test_log_likelihood": ll,
                                    "ll_images": 100, "iw_samples": 5000}))


def test_table_has_current_and_historical_rows(tmp_path):
    write(tmp_path, "p", {"description": "tiny recipe", "seeds": [0, 1],
                          "overrides": {"model.likelihood.name": "bernoulli"}})
    index = build_index(tmp_path)
    runs, archive = tmp_path / "runs", tmp_path / "archive"
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    assert "| p |" not in write_table(index, runs, archive, md, csv)  # nothing run yet: no row
    fake_run(run_dir(runs, "p", 0), 0.9, -90.0, 120)
    assert "| 0.9000 (n=1 of 2) | - | 0.5000 | 90.00 | - |" in write_table(index, runs, archive, md, csv)
    fake_run(run_dir(runs, "p", 1), 0.8, -92.0, 180)
    for seed, val, sem in ((0, 0.91, 0.3), (1, 0.81, 0.5)):  # the validate stage's, evaluate's s.e.
        (run_dir(runs, "p", seed) / "validation.json").write_text(json.dumps({"val_cluster_accuracy": val}))
        evaluate = run_dir(runs, "p", seed) / "evaluate.json"
        evaluate.write_text(json.dumps({**json.loads(evaluate.read_text()), "test_log_likelihood_sem": sem}))
    fake_run(run_dir(archive / "runs", "old", 3), 0.7, -95.0, 60, current=False)
    (archive / "index.yaml").write_text(yaml.safe_dump({"presets": {"old": {
        "description": "an old recipe", "kind": "vae", "likelihood": "bernoulli", "commits": {3: "abc1234"}}}}))
    table = write_table(index, runs, archive, md, csv)
    current, historical = table.split("## Historical")
    assert ("| p | moe_vae | tiny recipe | 0.8500 ± 0.0707 (n=2) | 0.8600 ± 0.0707 | 0.5000 | 91.00 ± 1.41 | 0.40 | "
            "bernoulli (100 images × 5000 samples) | 1 | 2.5 | 1 worker x CPU (2 threads) | current |") in current
    assert "| old | vae | an old recipe | 0.7000 (n=1) | - |" in historical and "historical @ abc1234 |" in historical
    assert md.read_text() == table
    header, *rows = csv.read_text().splitlines()
    assert header.startswith("preset,kind,recipe,source,seeds") and len(rows) == 2
    assert markdown([]).count("\n") == 2  # header and rule only
    (archive / "runs/old/seed3/evaluate/metrics.json").unlink()
    with pytest.raises(DataError, match="old seed 3 has no metrics"):
        write_table(index, runs, archive, md, csv)


def test_early_stopped_runs_show_their_epoch_span_and_kept_epoch(tmp_path):
    """train.early_stopping: seeds stop at different epochs and keep their best one; the
    epochs cell says both as ranges, and stays a plain count for the other rows."""
    write(tmp_path, "p", {"seeds": [0, 1], "overrides": {"model.likelihood.name": "bernoulli"}})
    index = build_index(tmp_path)
    runs = tmp_path / "runs"
    for seed, (epochs, best) in enumerate([(412, 362), (450, 441)]):
        fake_run(run_dir(runs, "p", seed), 0.9, -90.0, 60)
        (run_dir(runs, "p", seed) / "train.json").write_text(json.dumps({"epochs": epochs, "best_epoch": best}))
    table = write_table(index, runs, tmp_path / "archive", tmp_path / "t.md", tmp_path / "t.csv")
    assert "samples) | 412-450 (best 362-441) | 1.0 |" in table
    (run_dir(runs, "p", 1) / "train.json").write_text(json.dumps({"epochs": 412}))  # one seed without
    table = write_table(index, runs, tmp_path / "archive", tmp_path / "t.md", tmp_path / "t.csv")
    assert "samples) | 412 | 1.0 |" in table


def test_committed_table_is_the_stage_output(tmp_path):
    """Nobody types numbers into the table: experiments/table.md is what the table stage
    writes from the committed per-run metrics."""
    table = write_table(read_yaml(ROOT / INDEX), ROOT / "experiments/runs", ROOT / "experiments/archive",
                        tmp_path / "t.md", tmp_path / "t.csv")
    assert (ROOT / "experiments/table.md").read_text() == table
    assert (ROOT / "experiments/table.csv").read_text() == (tmp_path / "t.csv").read_text()


def test_readme_headline_numbers_come_from_the_table():
    """The README quotes the table; every `mean ± std` it quotes must be in it."""
    import re

    readme = (ROOT / "README.md").read_text()
    quoted = re.findall(r"\d+\.\d+ ± \d+\.\d+", readme)
    assert len(quoted) >= 4
    table = (ROOT / "experiments/table.md").read_text()
    assert [q for q in quoted if q not in table] == []


def test_readme_shows_the_current_rows_as_the_table_stage_makes_them():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- comparison")[1].split("-->", 1)[1].split("<!-- /comparison -->")[0]
    rows = [r for r in table_rows(read_yaml(ROOT / INDEX), ROOT / "experiments/runs",
                                  ROOT / "experiments/archive") if r["source"] == "current"]
    assert block.strip() == (compact(rows).strip() if rows else "")


def test_a_run_depends_on_its_resolved_preset_and_the_run_keys_that_change_numbers():
    from pipeline.params.train import RUNTIME_KEYS

    stage = yaml.safe_load((ROOT / "experiments/dvc.yaml").read_text())["stages"]["run"]["do"]
    listed = [p for p in stage["params"] if isinstance(p, str)]
    wanted = [k for k in RUN_KEYS if k.split(".")[1] not in RUNTIME_KEYS and k != "evaluate.workers"]
    assert sorted(listed) == sorted(wanted)  # where runs happen, not what they compute, is left out
    assert {"experiments/index.yaml": ["presets.${item.preset}.overrides"]} in stage["params"]
    assert "data/neighbours" in stage["deps"]
    assert "params/${item.preset}.yaml" not in stage["deps"]  # seeds and comments change no run
    # how presets resolve is in the index: editing presets.py or index.py stales no run
    assert "pipeline/experiments/runs.py" in stage["deps"]
    assert not {"pipeline/experiments/presets.py", "pipeline/experiments/index.py"} & set(stage["deps"])
    table = yaml.safe_load((ROOT / "experiments/dvc.yaml").read_text())["stages"]["table"]
    assert "params" in table["deps"]  # ...but the table stage checks the index against params/


def test_the_comparison_picture_shows_each_current_preset(tmp_path):
    import numpy as np
    from matplotlib.image import imsave

    from pipeline.experiments.pictures import PICTURE, comparison_figure

    write(tmp_path, "p", {"seeds": [3], "overrides": {"train.epochs": 1}})
    write(tmp_path, "q", {"overrides": {"train.epochs": 2}})  # no seeds: not shown
    index = build_index(tmp_path)
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    with pytest.raises(DataError, match="no preset's first seed has run"):
        comparison_figure(index, runs, cache)
    fake_run(run_dir(runs, "p", 3), 0.91, -99.5, 60)
    with pytest.raises(DataError, match="dvc pull experiments/dvc.yaml:run@p-3"):
        comparison_figure(index, runs, cache)
    (cache / "p/seed3" / PICTURE).parent.mkdir(parents=True)
    imsave(cache / "p/seed3" / PICTURE, np.zeros((8, 8)), cmap="gray")
    fig = comparison_figure(index, runs, cache)
    assert [ax.get_title() for ax in fig.axes] == ["p\naccuracy 0.910, 99.5 nats"]
