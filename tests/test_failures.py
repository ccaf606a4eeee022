"""Failures born at write time or inside a Ray worker reach the user as one line: a full
disk (a real small tmpfs where the tests may mount one, else a fault injected at the
write), memory, Arrow; nothing half-written is left, and tracebacks go to the log."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pyarrow
import pytest
import torch
import yaml

from pipeline.core.failures import WriteError, describe, write_error
from pipeline.core.io import atomic_path
from tests.conftest import ROOT


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs at tmp_path/full (root, or a user allowed to mount), else a skip."""
    full = tmp_path / "full"
    full.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}); the injected tests cover it")
    yield full
    subprocess.run(["umount", "-l", str(full)], check=False)


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("exc, words, retryable", [
    (OSError(errno.ENOSPC, "No space left on device"), ["no space left", "out.pt"], False),
    (OSError(5, "[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"),
     ["no space left"], False),
    (MemoryError(), ["out of memory", "train.batch_size"], False),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 400000000000 bytes."), ["out of memory", "model.net.hidden"], False),
    (pyarrow.ArrowInvalid("No match for FieldRef.Name(pixels)"), ["rerun the prepare stage"], False),
    (ConnectionResetError(104, "Connection reset by peer"), ["ConnectionResetError"], True),
    (ValueError("a bug\nwith a second line"), ["ValueError: a bug"], False),
])
def test_a_foreign_failure_is_one_line_and_only_what_can_succeed_is_retried(exc, words, retryable):
    line, again = describe(exc, "out.pt")
    assert "\n" not in line and again is retryable
    for word in words:
        assert word in line, line


def test_a_full_disk_at_an_atomic_write_names_the_output_and_keeps_nothing(tmp_path):
    """Injected: the write fails half-way with ENOSPC."""
    out = tmp_path / "model.pt"
    with pytest.raises(WriteError) as e:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert str(e.value).startswith(f"no space left on the device while writing {out}")
    assert leftovers(tmp_path) == []


def test_a_read_failure_inside_an_atomic_write_is_not_called_a_write(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "shards"):
            (tmp_path / "raw.gz").read_bytes()  # an input, not the output
    assert leftovers(tmp_path) == []


def test_torch_save_onto_a_full_tmpfs_is_one_line(small_fs):
    """torch's zip writer loses the errno ("iostream error", "unexpected pos"): the
    message still says the disk is full, and no partial file stays."""
    with pytest.raises(WriteError) as e:
        with atomic_path(small_fs / "model.pt") as tmp:
            torch.save({"w": torch.zeros(1_000_000)}, tmp)  # 4 MB onto 1 MB
    assert "no space left on the device while writing" in str(e.value) and "\n" not in str(e.value)
    assert leftovers(small_fs) == []
    assert "disk" not in str(write_error(small_fs / "x", PermissionError(13, "Permission denied")))


# --- through the stages (Ray) -------------------------------------------------------------

INJECT = '''
import os
if os.environ.get("INJECT") == "storage":  # Ray Train copies a checkpoint with pyarrow.fs
    import errno, pyarrow.fs
    def copy_files(*args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    pyarrow.fs.copy_files = copy_files
if os.environ.get("INJECT") == "memory":  # the first optimizer step cannot allocate
    import torch.optim
    def step(self, *args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB (injected)")
    torch.optim.Adam.step = step
'''


def train(tmp_path, shards, storage, model="m.pt", inject=""):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "model": {"moe_vae": {"experts": 2}, "net": {"latent_dim": 4, "hidden": 256}},
        "train": {"epochs": 2, "batch_size": 20, "storage_path": str(storage)}}))
    (tmp_path / "inject").mkdir(exist_ok=True)
    (tmp_path / "inject/sitecustomize.py").write_text(INJECT)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'inject'}{os.pathsep}{ROOT}", "INJECT": inject}
    return subprocess.run([sys.executable, "-m", "stages.train", "--shards", str(shards),
                           "--model", str(model), "--live", "live", "--record", "r.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


def the_line(run) -> str:
    """The one line the user sees on stderr, checked to be the only one."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and "Traceback" not in run.stdout, run.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("way", ["tmpfs", "injected"])
def test_full_checkpoint_storage_is_one_line_and_leaves_no_partial_checkpoint(tiny_shards, tmp_path, way,
                                                                            request):
    storage = (request.getfixturevalue("small_fs") if way == "tmpfs" else tmp_path / "store") / "ckpt"
    line = the_line(train(tmp_path, tiny_shards, storage, inject="storage" if way == "injected" else ""))
    assert line.startswith("error: training stopped: no space left on the device while writing "
                           f"{storage}/"), line
    assert "train.storage_path" in line and "no checkpoint was written" in line
    assert not list(storage.glob("*/checkpoint_*")) and not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_full_disk_at_the_model_write_is_one_line_and_the_rerun_only_writes(tiny_shards, tmp_path,
                                                                          small_fs):
    line = the_line(train(tmp_path, tiny_shards, tmp_path / "ckpt", model=small_fs / "m.pt"))
    assert line.startswith(f"error: no space left on the device while writing {small_fs / 'm.pt'}")
    assert "so a rerun only writes the outputs" in line and leftovers(small_fs) == []
    again = train(tmp_path, tiny_shards, tmp_path / "ckpt")
    assert again.returncode == 0 and "resuming from the checkpoint after epoch 2" in again.stdout, again.stderr


@pytest.mark.slow
def test_a_worker_failure_is_one_line_and_its_traceback_goes_to_the_log(tiny_shards, tmp_path):
    line = the_line(train(tmp_path, tiny_shards, tmp_path / "ckpt", inject="memory"))
    assert line.startswith("error: training stopped: out of memory (DefaultCPUAllocator"), line
    log = Path(line.split("(traceback in ")[1].split(")")[0])
    assert "Traceback (most recent call last)" in log.read_text() and "injected" in log.read_text()


@pytest.mark.slow
def test_full_disk_while_prepare_writes_is_one_line(mnist_dir, tmp_path, small_fs):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"raw_dir": str(mnist_dir)}}))
    run = subprocess.run([sys.executable, "-m", "stages.prepare", "--out", str(small_fs / "shards")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert the_line(run).startswith(f"error: no space left on the device while writing {small_fs / 'shards'}")
    assert leftovers(small_fs) == []


def test_a_failed_log_likelihood_task_is_one_line():
    import ray.exceptions

    from pipeline.evaluation.likelihood import task_failure

    failed = ray.exceptions.RayTaskError("_worker", "Traceback (most recent call last):\n  ...", MemoryError())
    assert task_failure(failed).startswith("out of memory") and "\n" not in task_failure(failed)


def test_a_full_disk_whose_free_space_cannot_be_read_is_still_one_line(tmp_path, monkeypatch):
    import pipeline.core.failures as failures

    monkeypatch.setattr(failures, "free_bytes", lambda path: None)  # disk_usage refused
    line = str(write_error(tmp_path / "m.pt", OSError(errno.ENOSPC, "No space left on device")))
    assert line.startswith(f"no space left on the device while writing {tmp_path / 'm.pt'}; free")
