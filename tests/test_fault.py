"""Fault tolerance: a training worker killed mid-run, and a `dvc repro` killed mid-train."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from pipeline.params import params_from_dict
from pipeline.core.storage import delete_tree
from pipeline.training.driver import fit
from pipeline.training.loop import STATE_FILE
from tests.conftest import ROOT
from tests.test_dvc_e2e import sh

pytestmark = pytest.mark.slow


@pytest.fixture
def shards(tmp_path) -> Path:
    """1 600 synthetic training images: epochs long enough (~1 s) to kill one mid-run."""
    from pipeline.data.idx import FILES, IMAGES_MAGIC, LABELS_MAGIC
    from pipeline.data.shards import write_shards
    from tests.conftest import write_idx

    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    counts = {"train": 1600, "test": 40}
    for split, n in counts.items():
        img_name, lbl_name = FILES[split]
        write_idx(raw / img_name, rng.integers(0, 256, (n, 28, 28)), IMAGES_MAGIC)
        write_idx(raw / lbl_name, rng.integers(0, 10, n), LABELS_MAGIC)
    write_shards(tmp_path / "shards", raw, shards=2, train_limit=None, counts=counts, md5=None)
    return tmp_path / "shards"


def params(storage, max_failures: int, **train):
    return params_from_dict({
        "model": {"moe_vae": {"experts": 4}, "net": {"latent_dim": 8, "hidden": 64}},
        "train": {"epochs": 4, "batch_size": 40, "lr": 1e-3, "num_workers": 2, "seed": 3,
                  "max_failures": max_failures, "storage_path": str(storage), **train},
    })


def checkpoints(storage: Path):
    return sorted(p.parent for p in storage.glob(f"*/checkpoint_*/{STATE_FILE}"))


def registered(storage: Path) -> bool:
    """Ray Train has recorded a checkpoint as the one to resume from. A checkpoint folder
    on storage alone is not enough: the controller registers it a moment later."""
    return any(storage.glob("*/checkpoint_manager_snapshot.json"))


def fit_killing_one_worker(ray_session, params, shards):
    """fit(params) with one of its 2 DDP workers SIGKILLed as soon as the first checkpoint
    is registered -> (final state, that first checkpoint's state, the killed pid)."""
    from ray.util.state import list_actors

    storage, box = Path(params.train.storage_path), {}

    def run():
        try:
            box["state"] = fit(params, shards, log=lambda s: None)
        except BaseException as e:  # noqa: BLE001  (re-raised in the test thread)
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.time() + 300
    while not registered(storage):
        assert thread.is_alive() and time.time() < deadline, box.get("error", "no checkpoint")
        time.sleep(0.02)
    first = torch.load(checkpoints(storage)[0] / STATE_FILE, weights_only=True)
    workers = list_actors(address=ray_session.get_runtime_context().gcs_address,
                          filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    pids = [w.pid for w in workers if psutil.pid_exists(w.pid)]  # not an earlier run's
    assert len(pids) == 2, workers
    os.kill(pids[-1], signal.SIGKILL)
    assert thread.is_alive()  # mid-run: not finished when the worker died
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    return box["state"], first, pids[-1]


def test_killed_worker_resumes_from_checkpoint_and_matches_uninterrupted_run(ray_session, shards, tmp_path):
    # The reference run also takes the URI route of train.storage_path (file:// here,
    # s3:// or gs:// on a cluster): Ray Train and our cleanup both resolve it via pyarrow.
    # under a cosine lr: each epoch sets its own lr, so the resumed epochs take the
    # uninterrupted run's lr, not the one the checkpointed optimizer carried
    lines = []
    reference = fit(params(f"file://{tmp_path / 'ref'}", 0, lr_schedule="cosine"), shards, log=lines.append)
    # no GPU here: train.use_gpu=auto falls back to gloo with exactly one notice
    assert len([ln for ln in lines if "training on CPU (gloo)" in ln]) == 1
    assert reference["run_dir"].startswith(f"file://{tmp_path / 'ref'}/")
    assert checkpoints(tmp_path / "ref")
    assert delete_tree(reference["run_dir"]) == "" and not checkpoints(tmp_path / "ref")

    state, first, victim = fit_killing_one_worker(ray_session, params(tmp_path / "killed", 1, lr_schedule="cosine"),
                                                  shards)
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    history, ref_history = state["history"], reference["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    # Epoch 1 came from the checkpoint, wall-clock seconds included: resumed, not restarted.
    assert state["timings"][0] == json.loads(first["timings"])[0]
    lrs = [t["lr"] for t in state["timings"]]
    assert lrs == [t["lr"] for t in reference["timings"]] and lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]
    # Same seed: the per-(epoch, rank) reseeding makes the resumed run repeat the
    # uninterrupted one; measured identical here, asserted to 1e-6 relative.
    for row, ref in zip(history, ref_history):
        for key in ("loss", "expected_expert_loss", "balancing_loss"):
            assert row[key] == pytest.approx(ref[key], rel=1e-6), (row["epoch"], key)
    for name, w in state["model"]["state_dict"].items():
        torch.testing.assert_close(w, reference["model"]["state_dict"][name], rtol=1e-5, atol=1e-6)


def test_worker_killed_during_the_restart_choice_resumes_the_choice(ray_session, shards, tmp_path):
    """The first checkpoint follows candidate 0's score; a worker killed while candidate 1
    trains resumes the choice at candidate 1, not at 0, and it ends as an uninterrupted one."""
    restarts = {"restarts": 2, "restart_epochs": 2, "epochs": 3}
    reference = fit(params(tmp_path / "ref", 0, **restarts), shards, log=lambda s: None)
    state, first, _ = fit_killing_one_worker(ray_session, params(tmp_path / "killed", 1, **restarts), shards)
    partial = json.loads(first["restarts"])
    assert first["epoch"] == 2 and len(partial["scores"]) == 1 and partial["chosen"] == 0
    record, ref = state["restarts"], reference["restarts"]
    assert record["scores"] == pytest.approx(ref["scores"], rel=1e-6) and record["chosen"] == ref["chosen"]
    assert record["scores"][0] == pytest.approx(partial["scores"][0], rel=1e-12)  # kept, not redone
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3] and state["seed"] == reference["seed"]
    for row, ref_row in zip(state["history"], reference["history"]):
        assert row["loss"] == pytest.approx(ref_row["loss"], rel=1e-6), row["epoch"]
    for name, w in state["model"]["state_dict"].items():
        torch.testing.assert_close(w, reference["model"]["state_dict"][name], rtol=1e-5, atol=1e-6)


def test_killed_dvc_repro_leaves_no_partial_outputs_and_rerun_resumes(tmp_path, mnist_dir):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo)
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"].update(raw_dir=str(mnist_dir), shards=2, train_limit=1500)
    p["model"]["moe_vae"].update(experts=4, manager={})  # the seeds' manager: fast
    p["model"]["net"].update(hidden=64, latent_dim=8)
    p["train"].update(epochs=4, batch_size=50, num_workers=1)
    p["evaluate"].update(iw_samples=20, iw_chunk=20, ll_limit=100)
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (repo / ".gitignore").write_text("/.ray_results/\n__pycache__/\n")
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q", repo)
    sh("git add -A && git commit -qm init", repo)

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env.pop("RAY_ADDRESS", None)
    # The main model only (train's checkpoint is the one watched); experiment/tune stages
    # would otherwise train in between, in an order DVC picks.
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not registered(repo / ".ray_results"):
            assert proc.poll() is None and time.time() < deadline, "train never checkpointed"
            time.sleep(0.05)
        first = json.loads(torch.load(checkpoints(repo / ".ray_results")[0] / STATE_FILE,
                                      weights_only=True)["timings"])
    finally:  # SIGKILL dvc, the stage and its private Ray: no handler gets to tidy up
        try:
            tree = [proc, *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = [proc]
        for q in tree:
            try:
                q.kill() if isinstance(q, psutil.Process) else q.send_signal(signal.SIGKILL)
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
        proc.wait(timeout=30)
        psutil.wait_procs([q for q in tree if isinstance(q, psutil.Process)], timeout=30)

    lock = yaml.safe_load((repo / "dvc.lock").read_text()) if (repo / "dvc.lock").exists() else {}
    assert "train" not in (lock or {}).get("stages", {})
    for out in ("models/model.pt", "metrics/train_run.json", "dvclive/train/plots/images",
                "dvclive/evaluate"):
        assert not (repo / out).exists(), out
    # The live curves (logged while training, for `dvc plots show`) stop at a registered
    # epoch; DVC recorded no output of the stage, and deletes them before the rerun.
    curve = repo / "dvclive/train/plots/metrics/loss.tsv"  # absent if killed before a poll
    live = curve.read_text().splitlines()[1:] if curve.exists() else []
    assert [int(row.split("\t")[0]) for row in live] == list(range(1, len(live) + 1))
    # no half-written temp file or folder from the atomic writers either
    top = (".git", ".dvc", ".dvcignore", ".ray_results")
    assert not [f for f in repo.rglob(".*")
                if f.name != ".gitignore" and f.relative_to(repo).parts[0] not in top]

    sh("dvc repro evaluate", repo)
    assert json.loads((repo / "dvclive/train/metrics.json").read_text())["epochs"] == 4
    with open(repo / "dvclive/train/plots/metrics/loss.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    # Resumed, not retrained: epoch 1's wall-clock seconds are the killed run's.
    record = json.loads((repo / "metrics/train_run.json").read_text())
    assert record["epochs"][0]["seconds"] == pytest.approx(first[0]["seconds"], rel=1e-9)
    assert "Data and pipelines are up to date" in sh("dvc status evaluate", repo)


def registered_epoch(storage: Path) -> int:
    """The last epoch whose checkpoint Ray Train has registered, over the runs in storage."""
    from pipeline.training.worker import checkpoints as registered

    return max((registered(str(d))[0] for d in storage.glob("*") if d.is_dir()), default=0)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_during_training_says_what_a_rerun_resumes(shards, tmp_path, sig, code):
    """SIGINT to the stage's process group (what Ctrl-C in a terminal sends), or SIGTERM
    (schedulers, containers, `timeout`): one line, exit 128 + the signal, and the rerun
    resumes from the checkpoint that line names."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "model": {"moe_vae": {"experts": 4}, "net": {"latent_dim": 8, "hidden": 64}},
        "train": {"epochs": 10, "batch_size": 40, "storage_path": str(tmp_path / "ckpt")}}))
    cmd = [sys.executable, "-m", "stages.train", "--shards", str(shards), "--model", "m.pt",
           "--live", "live", "--record", "r.json"]
    # SIGINT as a terminal delivers it: a runner that started us in the background (`cmd &`
    # in a script) leaves SIGINT ignored, which the stage would inherit and keep.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, errs = [], []  # one reader per pipe: communicate() would race the stdout reader
    readers = [threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True),
               threading.Thread(target=lambda: errs.extend(proc.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        # Ctrl-C once epoch 2's line is on screen (it is printed once its checkpoint is
        # registered), or once that checkpoint is registered if Ray forwards the line late:
        # on a loaded machine a full CI run once saw it only after the run had ended.
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if any("epoch 2/10" in line for line in list(lines)) or registered_epoch(tmp_path / "ckpt") >= 2:
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.05)
        proc.wait(timeout=120)
        for reader in readers:
            reader.join(timeout=30)
    finally:
        proc.kill()
    err = "".join(errs)
    assert proc.returncode == code, f"{err[-2000:]}\nstdout:\n{''.join(lines)[-2000:]}"
    last = err.strip().splitlines()[-1]
    assert last.startswith("train: interrupted at epoch ") and "rerun to resume from the checkpoint after epoch" in last
    kept = int(last.split("checkpoint after epoch ")[1].split()[0])
    assert kept >= 2  # the "epoch 2/10" line comes once its checkpoint is registered
    assert "Traceback" not in err and "SIGTERM received" not in err and not (tmp_path / "m.pt").exists()
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from the checkpoint after epoch {kept}" in again.stdout
    assert json.loads((tmp_path / "live/metrics.json").read_text())["epochs"] == 10
