"""Ray Train: 2-worker DDP on tiny data, one-line failures, loopback-only listeners."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import torch

from pipeline.params import Params, params_from_dict
from pipeline.models.checkpoint import model_from_state
from pipeline.core.errors import TrainError
from pipeline.training.driver import fit
from tests.conftest import ROOT


def tiny_params(tmp_path, moe=None, **train) -> Params:
    return params_from_dict({
        "model": {"moe_vae": {"experts": 3, **(moe or {})}, "net": {"latent_dim": 4, "hidden": 32}},
        "train": {"epochs": 2, "batch_size": 40, "lr": 3e-3, "num_workers": 2,
                  "storage_path": str(tmp_path / "ray_results"), **train},
    })


def test_ddp_two_workers_learns_and_returns_a_rebuildable_model(ray_session, tiny_shards, tmp_path):
    # global batch 40; epoch 3, with the manager fixed, steps on 80 (expert_batch_scale)
    params = tiny_params(tmp_path, moe={"manager_epochs": 2, "expert_batch_scale": 2}, epochs=3,
                         batch_size=20, batch_scope="worker")
    stores = set(Path(tempfile.gettempdir()).glob("moe-vae-pg-*"))  # the process groups' FileStores
    lines = []
    state = fit(params, tiny_shards, log=lines.append)
    assert set(Path(tempfile.gettempdir()).glob("moe-vae-pg-*")) == stores  # removed at shutdown
    hist = state["history"]
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert {"expected_expert_loss", "balancing_loss"} <= set(hist[0])
    assert [t["epoch"] for t in state["timings"]] == [1, 2, 3] and state["timings"][0]["images_per_s"] > 0
    assert [t["global_batch"] for t in state["timings"]] == [40, 40, 80]
    assert any("2 worker(s)" in line for line in lines)
    model = model_from_state(state["model"])
    assert model.cfg == params.model
    assert model(torch.rand(2, 784))["loss"].isfinite()

    # Same params again: the run name is stable, so it resumes from the last
    # checkpoint (here: already finished) instead of training from scratch.
    again = fit(params, tiny_shards, log=lines.append)
    assert again["timings"] == state["timings"]  # wall-clock seconds: nothing was retrained


def test_nan_loss_stops_at_once_whatever_max_failures_says(ray_session, tiny_shards, tmp_path, capfd):
    # max_failures=-1 retried a NaN from the same checkpoint forever: not a transient fault
    params = tiny_params(tmp_path, lr=1e12, epochs=1, max_failures=-1)
    with pytest.raises(TrainError) as e:
        fit(params, tiny_shards, log=lambda s: None)
    msg = str(e.value)
    assert "non-finite loss" in msg and "epoch 1, step" in msg and "\n" not in msg
    # the NaN came in epoch 1: no checkpoint to point to, and none promised
    assert msg.endswith("no checkpoint was written") and "checkpoint after" not in msg
    assert "Traceback" not in capfd.readouterr().err


def test_a_corrupt_shard_of_one_worker_is_one_line_without_a_traceback(ray_session, tiny_shards,
                                                                        tmp_path, capfd):
    from pipeline.core.errors import PipelineError

    shard = sorted(tiny_shards.glob("**/train-*.parquet"))[1]  # rank 1's only shard
    data = bytearray(shard.read_bytes())  # a flipped byte in its pages, its footer intact:
    data[len(data) // 3] ^= 0xFF  # the driver's footer check passes, the worker's checksum fails
    shard.write_bytes(bytes(data))
    with pytest.raises(PipelineError) as e:
        fit(tiny_params(tmp_path, max_failures=2), tiny_shards, log=lambda s: None)
    assert "checksum differs from manifest.json" in str(e.value) and "\n" not in str(e.value)
    assert shard.name in str(e.value)
    assert "Traceback" not in capfd.readouterr().err


def test_the_message_names_the_last_checkpoint_only_when_there_is_one(tmp_path):
    from pipeline.training.driver import interrupted, what_is_kept
    from pipeline.training.worker import checkpoints

    run = tmp_path / "run"
    assert checkpoints(str(run)) == (0, 0) and what_is_kept(str(run)) == "no checkpoint was written"

    def register(name):  # what Ray Train's controller writes once a checkpoint is reported
        (run / name).mkdir(parents=True)
        (run / "checkpoint_manager_snapshot.json").write_text(
            json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": name}}))

    register("checkpoint_restart1")
    assert "after restart candidate 1" in what_is_kept(str(run))
    register("checkpoint_epoch0003")
    (run / "checkpoint_epoch0004").mkdir()  # saved, not yet registered: a rerun won't use it
    assert checkpoints(str(run)) == (3, 0)
    assert str(interrupted(str(run), 10)) == (f"train: interrupted at epoch 4/10; rerun to resume "
                                               f"from the checkpoint after epoch 3 in {run}")


def test_a_global_batch_larger_than_the_data_fails_before_ray_work(tiny_shards, tmp_path):
    from pipeline.core.errors import DataError

    # more workers than shards is fine (every worker reads them all); 4 x 120 > 400 rows is not
    params = tiny_params(tmp_path, num_workers=4, batch_size=120, batch_scope="worker")
    with pytest.raises(DataError, match="400 training rows are fewer than one global batch of 480"):
        fit(params, tiny_shards, log=lambda s: None)


def listening(procs) -> list:
    """(process, address) of every listening TCP socket of `procs`."""
    found = []
    for proc in procs:
        try:
            found += [(" ".join(proc.cmdline()[:2])[:60], c.laddr) for c in proc.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return found


def test_a_local_run_listens_on_loopback_only(ray_session, tiny_shards, tmp_path):
    """Every listening socket of this test's own Ray processes (not the machine's: another
    Ray beside the suite is not ours), sampled while a 2-worker DDP run trains."""
    import threading

    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(listening(psutil.Process().children(recursive=True)))
            done.wait(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        fit(tiny_params(tmp_path, epochs=2), tiny_shards, log=lambda s: None)
    finally:
        done.set()
        watcher.join()
    assert any("default_worker" in name or "ray::" in name for name, _ in seen)  # it saw workers
    exposed = [(n, a) for n, a in seen if not a.ip.startswith(("127.", "::ffff:127.", "::1"))]
    assert not exposed, exposed


def test_two_pipelines_on_one_machine_train_at_once(ray_session, tiny_shards, tmp_path, capfd):
    """A second private Ray instance (a second run, a dvc exp queue worker) beside this
    session's: both train, and nothing fails to find its own instance."""
    script = (f"from pipeline.training.driver import fit\n"
              f"from tests.test_train_ray import tiny_params\n"
              f"from pathlib import Path\n"
              f"fit(tiny_params(Path({str(tmp_path / 'other')!r}), epochs=3), Path({str(tiny_shards)!r}))\n")
    other = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        state = fit(tiny_params(tmp_path / "ours", epochs=3), tiny_shards, log=lambda s: None)
        out, _ = other.communicate(timeout=300)
    finally:
        other.kill()
    assert other.returncode == 0, out[-2000:]
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3] and "epoch 3/3" in out
    assert "multiple active Ray instances" not in out + capfd.readouterr().err


def files(folder: Path) -> dict:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_two_runs_of_the_same_params_write_identical_results(ray_session, tiny_shards, tmp_path):
    """The dvclive folder holds results only: byte for byte equal across two runs on one
    machine; wall time, throughput and the environment go to the run record."""
    from pipeline.training.driver import write_outputs

    params = tiny_params(tmp_path, epochs=2, num_workers=1)
    for run in ("a", "b"):  # write_outputs deletes the checkpoints: b trains from scratch
        out = tmp_path / run
        state = fit(params, tiny_shards, log=lambda s: None, live_dir=out / "live")
        write_outputs(state, params, out / "model.pt", out / "live", out / "run.json", log=lambda s: None)
    live_a, live_b = files(tmp_path / "a/live"), files(tmp_path / "b/live")
    assert live_a == live_b
    # dvclive's layout: the summary, one TSV per loss part (step = epoch), a picture per epoch
    assert {"metrics.json", "plots/metrics/loss.tsv", "plots/metrics/balancing_loss.tsv",
            "plots/images/components/1.png", "plots/images/components/2.png",
            "plots/images/components_over_epochs.png"} <= set(live_a)
    summary = json.loads(live_a["metrics.json"])
    assert summary["epochs"] == summary["step"] == 2 and summary["parameters"] > 0
    loss = live_a["plots/metrics/loss.tsv"].decode().splitlines()
    assert loss[0] == "step\tloss" and [row.split("\t")[0] for row in loss[1:]] == ["1", "2"]
    assert float(loss[-1].split("\t")[1]) == summary["loss"] == state["history"][-1]["loss"]
    assert "seconds" not in live_a["metrics.json"].decode()
    record_a, record_b = (json.loads((tmp_path / r / "run.json").read_text()) for r in "ab")
    assert record_a["train_seconds"] > 0 and len(record_a["epochs"]) == 2
    assert {"device", "torch", "blas", "cpu_capability", "threads"} <= set(record_a["environment"])
    assert record_a != record_b  # the timings differ, as they may


def tensorboard_scalars(folder: Path) -> dict:
    """{tag: [(step, value)]} of every event file under `folder` (TFRecord framing:
    length u64, its crc u32, the Event proto, its crc u32)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        data, at = f.read_bytes(), 0
        while at < len(data):
            (n,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + n])
            at += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_losses_are_logged_while_training_and_to_tensorboard_on_request(ray_session, tiny_shards,
                                                                          tmp_path, monkeypatch):
    """The driver logs each registered epoch into the dvclive folder during the run (so
    `dvc plots show` follows it), and, with train.tensorboard, to TensorBoard."""
    import pipeline.training.driver as driver

    seen = []
    real = driver.registered_history
    monkeypatch.setattr(driver, "registered_history",
                        lambda run_dir: seen.append(len(real(run_dir))) or real(run_dir))
    params = tiny_params(tmp_path, epochs=3, num_workers=1, tensorboard=True)
    live = tmp_path / "live"
    state = fit(params, tiny_shards, log=lambda s: None, live_dir=live)
    assert max(seen) >= 1  # at least one epoch was read from Ray's registered checkpoints
    tsv = (live / "plots/metrics/loss.tsv").read_text().splitlines()  # logged live, not at the end
    assert [row.split("\t")[0] for row in tsv[1:]] == ["1", "2", "3"]
    board = tensorboard_scalars(tmp_path / "ray_results" / "tensorboard")
    assert [step for step, _ in board["train/loss"]] == [1, 2, 3]
    assert board["train/loss"][-1][1] == pytest.approx(state["history"][-1]["loss"], rel=1e-6)


def test_portable_cpu_pins_the_kernels_and_is_recorded(ray_session, tiny_shards, tmp_path):
    from pipeline.training.driver import write_outputs

    params = tiny_params(tmp_path, epochs=1, num_workers=1, portable_cpu=True, threads=1)
    out = tmp_path / "p"
    write_outputs(fit(params, tiny_shards, log=lambda s: None), params, out / "model.pt", out / "live",
                  out / "run.json", log=lambda s: None)
    env = json.loads((out / "run.json").read_text())["environment"]
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["cpu_capability"] in ("AVX2", "DEFAULT")
    assert env["threads"] == "1"


def test_compiled_deterministic_ddp_run_matches_the_eager_one(ray_session, tiny_shards, tmp_path):
    """train.compile and train.deterministic through the worker path: two DDP workers, the
    compiled step (with DDP's graph breaks) gives the eager run's losses within rounding."""
    eager = fit(tiny_params(tmp_path / "e", epochs=2), tiny_shards, log=lambda s: None)["history"]
    fused = fit(tiny_params(tmp_path / "c", epochs=2, compile="default", deterministic=True),
                tiny_shards, log=lambda s: None)["history"]
    assert [r.keys() for r in fused] == [r.keys() for r in eager]
    for e, f in zip(eager, fused):
        assert all(f[k] == pytest.approx(e[k], rel=1e-4, abs=1e-5) for k in e), (e, f)
