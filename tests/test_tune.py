"""Ray Tune sweeps on tiny data: outputs, ASHA early stopping, failures, resume, validation."""
import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.core.errors import ConfigError

from pipeline.params import load_params, params_from_dict, with_overrides
from pipeline.params.tune import LABEL_METRICS, TUNE_METRICS
from pipeline.sweep.space import check_space
from tests.conftest import ROOT

MODEL = {"moe_vae": {"experts": 2}, "net": {"latent_dim": 2, "hidden": 16}}


def sweep_params(tmp_path, space, tensorboard=False, **tune):
    return params_from_dict({
        "model": MODEL,
        "train": {"batch_size": 50, "lr": 3e-3, "storage_path": str(tmp_path / "ray_results"),
                  "tensorboard": tensorboard},
        "tune": {"space": space, "epochs": 2, "val_rows": 100, "val_iw_samples": 4,
                 "max_concurrent_trials": 1, "num_samples": 1, **tune},
    })


def report(trials, params, tmp_path):
    from pipeline.sweep.report import write_report

    return write_report(trials, params, 60.0, tmp_path / "sweep", tmp_path / "plots",
                        tmp_path / "metrics.json")


def test_tiny_sweep_over_the_three_params_writes_table_best_params_and_plots(
        ray_session, tiny_shards, tmp_path, capsys):
    from pipeline.sweep.run import run_sweep

    space = {"model.moe_vae.balancing_weight": {"loguniform": [0.01, 1.0]},
             "model.net.latent_dim": {"choice": [2, 3]}, "model.moe_vae.experts": {"choice": [2, 3]}}
    params = sweep_params(tmp_path, space, tensorboard=True, num_samples=3, scheduler="fifo")
    trials = run_sweep(params, tiny_shards)
    best = report(trials, params, tmp_path)
    # train.tensorboard: Tune's own logger wrote each trial's metrics for TensorBoard
    events = list((tmp_path / "ray_results").glob("*/*/events.out.tfevents.*"))
    assert len({e.parent for e in events}) == 3

    table = pd.read_csv(tmp_path / "sweep/table.csv")
    assert len(table) == 3 and set(table.status) == {"finished"} and (table.epochs == 2).all()
    assert {"model.moe_vae.balancing_weight", "model.net.latent_dim", "model.moe_vae.experts", "stopped_early",
            "final_val_log_likelihood", "best_val_log_likelihood", "final_cluster_accuracy"} <= set(table)
    assert table["model.moe_vae.balancing_weight"].between(0.01, 1.0).all()
    assert best["final_val_log_likelihood"] == table.final_val_log_likelihood.max()

    overlay = yaml.safe_load((tmp_path / "sweep/best_params.yaml").read_text())
    def leaves(node, prefix=""):
        for k, v in node.items():
            yield from (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)])
    flat = dict(leaves(overlay))
    assert set(flat) == set(space)
    applied = load_params(ROOT / "params.yaml", overrides=flat)  # usable by the train stage
    assert applied.model.net.latent_dim == best["model.net.latent_dim"]

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["trials"] == metrics["finished"] == 3 and metrics["failed"] == 0
    assert metrics["best_val_log_likelihood"] == best["final_val_log_likelihood"]
    # every objective is ranked against the (report-only) accuracy; 3 finished trials
    assert set(metrics["objectives"]) == {"val_log_likelihood", "val_mutual_info", "val_loss"}
    assert metrics["accuracy_max"] == table.final_cluster_accuracy.max()
    assert (table.final_val_mutual_info.between(0, np.log(3) + 1e-6)).all()
    assert (table.setup_seconds > 0).all() and (table.first_epoch_seconds > 0).all()
    curves = pd.read_csv(tmp_path / "plots/curves.csv")
    assert len(curves) == 6 and set(curves.epoch) == {1, 2}
    assert "model_moe_vae_balancing_weight" in pd.read_csv(tmp_path / "plots/trials.csv")
    for png in ("metric_vs_params.png", "learning_curves.png", "objective_vs_accuracy.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 0

    out = capsys.readouterr().out
    assert out.count(" started (") == 3 and out.count(" finished: val_log_likelihood") == 3
    assert "ended, best" in out and "Trial status" not in out  # our lines, not Tune's tables


def test_a_trial_anneals_its_lr_over_its_budget_under_train_lr_schedule(ray_session, tiny_shards, tmp_path):
    """Same seed, lr 3e-3 in epoch 1 either way: the cosine trial matches the constant one
    in epoch 1 and departs from it once its lr falls (epoch 2 of 3: 3e-3 x 3/4)."""
    from pipeline.sweep.run import run_sweep

    params = sweep_params(tmp_path, {"train.lr_schedule": {"grid": ["constant", "cosine"]}}, epochs=3,
                          scheduler="fifo")
    trials = {t["config"]["train.lr_schedule"]: t for t in run_sweep(params, tiny_shards, log=lambda s: None)}
    const, cos = (trials[k]["history"] for k in ("constant", "cosine"))
    assert len(const) == len(cos) == 3 and const[0]["loss"] == cos[0]["loss"]
    assert all(c["loss"] != k["loss"] for c, k in zip(const[1:], cos[1:]))


def test_asha_stops_a_clearly_worse_trial_after_the_grace_period(ray_session, tiny_shards, tmp_path):
    from pipeline.sweep.report import results_rows
    from pipeline.sweep.run import run_sweep

    # One at a time, in grid order: the good lr sets rung 1; the near-zero lr is then
    # below the rung's top half (reduction_factor 2) and is stopped after epoch 1.
    params = sweep_params(tmp_path, {"train.lr": {"grid": [1e-2, 1e-9]}}, epochs=3,
                          grace_period=1, reduction_factor=2)
    trials = run_sweep(params, tiny_shards, log=lambda s: None)
    by_lr = {t["config"]["train.lr"]: t for t in trials}
    assert by_lr[1e-2]["status"] == "finished" and len(by_lr[1e-2]["history"]) == 3
    assert by_lr[1e-9]["status"] == "stopped" and len(by_lr[1e-9]["history"]) == 1
    rows = {r["train.lr"]: r for r in results_rows(trials, 3)}
    assert rows[1e-9]["stopped_early"] and not rows[1e-2]["stopped_early"]


def test_a_crashing_trial_is_recorded_as_failed_and_the_sweep_goes_on(
        ray_session, tiny_shards, tmp_path, capsys):
    from pipeline.sweep.run import run_sweep

    # max_failures=-1 retried the diverging trial from its checkpoint forever: a NaN is
    # not transient, so it fails at once whatever max_failures says
    params = sweep_params(tmp_path, {"train.lr": {"grid": [1e12, 3e-3]}}, epochs=2, max_failures=-1)
    trials = run_sweep(params, tiny_shards)
    best = report(trials, params, tmp_path)
    status = {t["config"]["train.lr"]: t["status"] for t in trials}
    assert status == {1e12: "failed", 3e-3: "finished"}
    failed = next(t for t in trials if t["status"] == "failed")
    assert "non-finite loss" in failed["error"]
    assert best["train.lr"] == 3e-3
    assert json.loads((tmp_path / "metrics.json").read_text())["failed"] == 1
    assert "FAILED" in capsys.readouterr().out


LINES, ARMED = [], {"interrupt": True, "signal": signal.SIGINT}


def interrupting_log(line: str) -> None:
    """Progress sink that presses Ctrl-C (or sends SIGTERM) once, right after the first
    trial finishes. Module-level: the callback is pickled into the sweep state and
    restored with it."""
    LINES.append(line)
    if ARMED["interrupt"] and " finished: " in line:
        ARMED["interrupt"] = False
        os.kill(os.getpid(), ARMED["signal"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
        ray_session, tiny_shards, tmp_path, sig, monkeypatch):
    from pipeline import cli
    from pipeline.sweep.run import SweepInterrupted, run_sweep

    ARMED.update(interrupt=True, signal=sig)
    LINES.clear()
    monkeypatch.setitem(cli._stopped_by, "signal", signal.SIGINT)
    before = signal.signal(signal.SIGTERM, cli._terminate)  # what a stage (cli.run) installs
    params = sweep_params(tmp_path, {"model.net.latent_dim": {"grid": [2, 3, 4]}}, scheduler="fifo")
    # storage as a URI (as s3:// or gs:// on a cluster): it must not become a local folder
    params = with_overrides(params, {"train.storage_path": f"file://{tmp_path}/uri_results"})
    try:
        with pytest.raises(SweepInterrupted, match="rerun the stage"):
            run_sweep(params, tiny_shards, log=interrupting_log)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert cli._stopped_by["signal"] == sig  # the stage exits 128 + sig: 130 or 143
    first = list(LINES)
    done_first = {ln.split()[2] for ln in first if " finished: " in ln}
    assert len(done_first) == 1
    LINES.clear()

    trials = run_sweep(params, tiny_shards, log=interrupting_log)
    assert sorted(t["config"]["model.net.latent_dim"] for t in trials) == [2, 3, 4]
    assert all(t["status"] == "finished" and len(t["history"]) == 2 for t in trials)
    started_again = {ln.split()[2] for ln in LINES if " started (" in ln}
    assert started_again and not started_again & done_first  # the finished trial was kept
    assert any("resuming the sweep" in ln for ln in LINES)
    assert len({t["trial"] for t in trials}) == 3
    assert list((tmp_path / "uri_results").glob("tune-*/experiment_state-*.json"))


@pytest.mark.parametrize("space, needle", [
    ({"model.latnt_dim": {"choice": [8]}}, "unknown key 'model.latnt_dim'"),
    ({"model.net.latent_dim": {"choice": [0, 8]}}, "tune.space.model.net.latent_dim value 0"),
    ({"model.net.latent_dim": {"uniform": [2, 8]}}, "use choice for integers"),
    ({"model.moe_vae.balancing_weight": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
    ({"model.moe_vae.balancing_weight": {"normal": [0, 1]}}, "use one of ['loguniform'"),
    ({"data.shards": {"choice": [2]}}, "only model.* and train.* keys"),
    ({"train.epochs": {"choice": [2]}}, "use tune.epochs"),
    ({"latent_dim": {"choice": [2]}}, "keys are dotted params"),
])
def test_bad_space_is_one_line_naming_the_entry(space, needle):
    """The syntax fails as params.yaml loads, the values before the sweep's Ray starts."""
    with pytest.raises(ConfigError) as e:
        check_space(params_from_dict({"tune": {"space": space}}))
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("tune, needle", [
    ({"search": "grid"}, "tune.search=grid crosses lists only"),  # default space has a range
    ({"metric": "accuracy"}, "tune.metric='accuracy'"),
    ({"scheduler": "pbt"}, "tune.scheduler='pbt'"),
    ({"epochs": 1, "grace_period": 2}, "tune.epochs=1"),
    ({"gpus_per_trial": -1}, "tune.gpus_per_trial=-1"),
    ({"gpus_per_trial": 1.5}, "tune.gpus_per_trial=1.5"),
])
def test_bad_tune_settings_are_one_line(tune, needle):
    with pytest.raises(ConfigError) as e:
        params_from_dict({"tune": tune})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_default_objective_is_label_free_and_ignores_labels():
    from pipeline.models.registry import build_model
    from pipeline.sweep.trial import validate

    cfg = load_params(ROOT / "params.yaml").tune
    assert cfg.metric == "val_log_likelihood" and cfg.metric not in LABEL_METRICS
    assert TUNE_METRICS[cfg.metric] == "max" and cfg.scheduler == "asha"
    model = build_model(params_from_dict({"model": MODEL}).model)
    x = torch.rand(40, 784)
    labels = np.arange(40) % 10
    a = validate(model, x, labels, iw_samples=4, seed=0)
    b = validate(model, x, np.zeros(40, dtype=int), iw_samples=4, seed=0)
    for m in ("val_log_likelihood", "val_mutual_info", "val_loss"):
        assert a[m] == b[m]  # labels cannot move a label-free objective
    assert b["cluster_accuracy"] != a["cluster_accuracy"] or b["nmi"] != a["nmi"]


def test_stage_rejects_a_bad_space_in_one_line_before_ray(tmp_path):
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("tune:\n  space:\n    model.latnt_dim: {choice: [8]}\n")
    r = subprocess.run([sys.executable, "-m", "stages.tune", "--shards", "s",
                        "--table-dir", "sweep", "--plots", "p", "--metrics", "m.json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "tune.space.model.latnt_dim" in r.stderr and "unknown key" in r.stderr
    assert "ray" not in r.stdout.lower() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("as_uri", [False, True])
def test_a_state_file_truncated_by_a_kill_is_detected(tmp_path, as_uri):
    from pipeline.sweep.run import _state_readable

    where = f"file://{tmp_path}" if as_uri else str(tmp_path)
    assert not _state_readable(where)  # nothing saved yet
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    assert _state_readable(where)
    (tmp_path / "experiment_state-2026-01-02_00-00-00.json").write_text("")  # newest, empty
    assert not _state_readable(where)


HMOE_SPACE = {"model.hmoe_vae.sub_experts": {"choice": [1, 2]},
              "model.hmoe_vae.sub_balancing_weight": {"loguniform": [0.1, 10.0]}}


def test_a_sweep_over_the_hierarchical_kinds_sub_experts_and_second_level_weight(
        ray_session, tiny_shards, tmp_path):
    from pipeline.sweep.run import run_sweep

    manager = {"consistency_weight": 1.0, "consistency_radius": "knn", "consistency_knn": 3}
    params = params_from_dict({
        "model": {"kind": "hmoe_vae", "hmoe_vae": {"experts": 2, "manager": manager},
                  "net": {"latent_dim": 2, "hidden": 16}},
        "train": {"batch_size": 50, "lr": 3e-3, "storage_path": str(tmp_path / "ray_results")},
        "tune": {"space": HMOE_SPACE, "search": "random", "scheduler": "fifo", "epochs": 1, "val_rows": 100,
                 "val_iw_samples": 4, "max_concurrent_trials": 1, "num_samples": 2, "grace_period": 1},
    })
    lines = []
    report(run_sweep(params, tiny_shards, log=lines.append), params, tmp_path)
    table = pd.read_csv(tmp_path / "sweep/table.csv")
    assert len(table) == 2 and set(table.status) == {"finished"}
    assert sum("side input ('knn_radius', 3)" in line for line in lines) == 1  # once, not per trial
    assert table["model.hmoe_vae.sub_balancing_weight"].between(0.1, 10.0).all()
    assert set(table["model.hmoe_vae.sub_experts"]) <= {1, 2} and table.final_cluster_accuracy.notna().all()


def test_a_trial_reuses_the_sweeps_side_input_only_where_its_key_is_the_same():
    """The knn radii are made once per sweep (a minute of CPU for MNIST), not once per
    trial; a trial that sweeps what they depend on makes its own."""
    from pipeline.models.registry import side_input, side_key
    from pipeline.sweep.trial import TrialSetup, trial_side

    def params(**manager):
        return params_from_dict({"model": {"moe_vae": {"manager": {
            "consistency_weight": 1.0, "consistency_radius": "knn", **manager}}}})

    pixels = torch.randint(0, 256, (40, 784), dtype=torch.uint8)
    base = params(consistency_knn=3)
    made = side_input(base.model, pixels)
    setup = TrialSetup(base={}, pixels=pixels.numpy(), labels=np.zeros(40, np.uint8), epochs=1,
                       val_rows=0, val_iw_samples=1, threads=1, use_gpu=False,
                       side_key=side_key(base.model), side=made)
    assert trial_side(base, setup, pixels) is made
    other = trial_side(params(consistency_knn=5), setup, pixels)
    assert other.shape == made.shape and not torch.equal(other, made)
    assert torch.equal(other, side_input(params(consistency_knn=5).model, pixels))
    assert trial_side(params(consistency_radius="fixed"), setup, pixels) is None


def test_the_second_level_is_checked_before_a_sweep():
    space = {**HMOE_SPACE, "model.hmoe_vae.sub_experts": {"choice": [0, 2]}}
    with pytest.raises(ConfigError, match=r"tune.space.model.hmoe_vae.sub_experts value 0 is rejected"):
        check_space(params_from_dict({"model": {"kind": "hmoe_vae"}, "tune": {"space": space}}))
    check_space(params_from_dict({"model": {"kind": "hmoe_vae"}, "tune": {"space": HMOE_SPACE}}))


def test_mutual_information_is_high_for_sure_even_clusters_and_zero_for_one():
    from pipeline.evaluation.metrics import mutual_information

    sure_even = torch.eye(4).repeat(5, 1)  # (20, 4): each image sure, clusters used evenly
    assert mutual_information(sure_even) == pytest.approx(np.log(4))
    assert mutual_information(torch.full((20, 4), 0.25)) == pytest.approx(0, abs=1e-9)  # unsure
    one = torch.zeros(20, 4)
    one[:, 0] = 1
    assert mutual_information(one) == pytest.approx(0, abs=1e-9)  # collapsed onto one cluster


def test_objective_check_ranks_each_objective_against_accuracy_with_its_sign():
    from pipeline.sweep.report import objective_check, results_rows

    def trial(i, acc, ll, mi, status="finished"):
        row = {"epoch": 1, "val_log_likelihood": ll, "val_mutual_info": mi, "val_loss": -ll,
               "cluster_accuracy": acc, "nmi": acc, "seconds": 1.0}
        return {"trial": f"t{i}", "config": {}, "status": status, "error": "", "history": [row]}

    # ll ranks the trials as accuracy does; mutual information the opposite way
    trials = [trial(i, acc, ll, mi) for i, (acc, ll, mi) in
              enumerate([(0.9, -100, 1.0), (0.8, -110, 1.5), (0.5, -120, 2.0), (0.95, -90, 0.5)])]
    trials.append(trial(9, 0.99, float("nan"), float("nan"), status="failed"))
    check = objective_check(trials, results_rows(trials, 1))
    assert check["val_log_likelihood"]["spearman_epoch_1"] == 1.0
    assert check["val_loss"]["spearman_final"] == 1.0  # lower loss is better: sign flipped
    assert check["val_mutual_info"]["spearman_epoch_1"] == -1.0
    assert check["val_log_likelihood"]["picked_accuracy"] == 0.95  # never the failed trial
    assert check["val_mutual_info"]["picked_accuracy"] == 0.5


MOVED = {}


def hide_shards_once_loaded(line: str) -> None:
    """Progress sink that moves the shards away as soon as the driver has read them (its
    "N trials x up to" line): the trials must run on what the object store holds."""
    if " trials x up to " in line and "src" in MOVED:
        MOVED["src"].rename(MOVED["dst"])


def test_trials_read_the_images_once_through_the_object_store_not_the_shards(
        ray_session, tiny_shards, tmp_path):
    import shutil

    from pipeline.sweep.run import run_sweep

    shards = tmp_path / "shards_copy"
    shutil.copytree(tiny_shards, shards)
    MOVED.update(src=shards, dst=tmp_path / "gone")
    params = sweep_params(tmp_path, {"model.net.latent_dim": {"grid": [2, 3]}}, scheduler="fifo",
                          epochs=1)
    trials = run_sweep(params, shards, log=hide_shards_once_loaded)
    assert not shards.exists() and (tmp_path / "gone").exists()
    assert [t["status"] for t in trials] == ["finished", "finished"]
    assert all(t["history"][0]["setup_seconds"] > 0 for t in trials)


def test_a_sweep_whose_every_trial_failed_is_one_line_and_writes_nothing(
        ray_session, tiny_shards, tmp_path):
    from pipeline.core.errors import TrainError
    from pipeline.sweep.run import run_sweep

    params = sweep_params(tmp_path, {"train.lr": {"grid": [1e12, 1e13]}}, epochs=1)
    trials = run_sweep(params, tiny_shards, log=lambda s: None)
    assert [t["status"] for t in trials] == ["failed", "failed"]
    with pytest.raises(TrainError) as e:
        report(trials, params, tmp_path)
    assert str(e.value).startswith("all 2 trials failed, e.g. non-finite loss") and "\n" not in str(e.value)
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "metrics.json").exists()


def test_docs_quote_the_committed_sweeps_numbers_verbatim():
    """docs/sweeps.md's findings block is what pipeline.sweep.summary makes of sweep/."""
    from pipeline.sweep.summary import block, summary

    assert block((ROOT / "docs/sweeps.md").read_text()) == summary(ROOT)


@pytest.mark.slow
def test_a_sweep_whose_ray_head_dies_ends_in_seconds_in_one_line_and_resumes(tiny_shards, tmp_path):
    """The stage in a subprocess with its own local Ray: killing that instance's GCS (the
    head) ends the driver in seconds, not Ray's 60 s, with one error line, no Ray process
    of that instance left; the rerun resumes the sweep."""
    import subprocess
    import sys
    import time

    import psutil

    params = sweep_params(tmp_path, {"model.net.latent_dim": {"grid": [2]}}, scheduler="fifo",
                          search="grid", epochs=60)
    from pipeline.core.schema import to_dict

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(to_dict(params)))
    cmd = [sys.executable, "-m", "stages.tune", "--shards", str(tiny_shards), "--table-dir", "sweep",
           "--plots", "plots", "--metrics", "m.json"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONPATH": str(ROOT)}
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=o, stderr=e)
    deadline = time.monotonic() + 240
    while " epoch 1/" not in out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text() + err.read_text()
        time.sleep(0.2)
    ray_procs = psutil.Process(proc.pid).children(recursive=True)  # this sweep's own instance only
    gcs = [p for p in ray_procs if p.name() == "gcs_server"]
    session = next(a for a in gcs[0].cmdline() if "session_" in a).split("session_")[1].split("/")[0]
    t0 = time.monotonic()
    gcs[0].kill()
    rc = proc.wait(timeout=60)
    assert rc == 1 and time.monotonic() - t0 < 20
    errors = [ln for ln in err.read_text().splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: sweep: the Ray head died")
    assert f"rerun to resume from {tmp_path / 'ray_results'}" in errors[0]
    assert "Failed to connect to GCS" not in err.read_text()
    left = [p for p in ray_procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    left += [p for p in psutil.process_iter(["cmdline"]) if f"session_{session}" in " ".join(p.info["cmdline"] or [])]
    assert not left, left

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "tune: resuming the sweep" in again.stdout and (tmp_path / "sweep/table.csv").exists()
