"""`dvc exp` queues in a scratch git repo: a grid of two balancing weights queued in one
command, run one after another by a queue worker (each run's train stage starting its
own local Ray), read back with `dvc exp show`, and nothing left running afterwards."""
import json
import math
import os
import shutil
import time

import pytest

from tests.conftest import ROOT
from tests.test_dvc_e2e import copy_project, edit_params, sh

pytestmark = pytest.mark.slow

GRID = (0.5, 2.0)  # not the baseline's 0.1, so both runs train
OTHER_PIPELINES = ("experiments/", "sweep/")  # their own runs' metrics, not the main job's


@pytest.fixture
def repo(tmp_path, mnist_dir):
    """The project with tiny params; MNIST in the git-ignored data/raw/ as the README says,
    and a commit whose dvc.lock holds the prepare stage: the queue's copies of the repo get
    only git- and DVC-tracked files, so they take data/shards from the DVC cache."""
    repo = tmp_path / "repo"
    copy_project(repo)
    (repo / "data/raw").mkdir(parents=True)
    for f in mnist_dir.glob("*.gz"):
        (repo / "data/raw" / f.name).symlink_to(f)

    def tiny(p):
        p["data"].update(raw_dir="data/raw", shards=2, train_limit=600)
        p["model"]["moe_vae"].update(experts=3, balancing_weight=0.1)
        p["model"]["net"].update(hidden=32, latent_dim=4)
        p["train"].update(epochs=1, batch_size=50)
        p["evaluate"].update(iw_samples=20, iw_chunk=20, ll_limit=100)
    edit_params(repo, tiny)
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q -f", repo)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    sh("dvc repro -q neighbours && git add -A && git commit -qm 'prepared data'", repo)
    assert "data/raw" not in sh("git ls-files data", repo)
    return repo


def queue_table(repo):
    """{experiment name: status} from `dvc queue status`."""
    rows = sh("dvc queue status", repo).splitlines()
    return {cols[1]: cols[-1] for cols in (r.split() for r in rows[1:])
            if len(cols) >= 5 and cols[-1] in ("Queued", "Running", "Success", "Failed")}


def processes_in(path):
    """Processes whose working directory is inside `path`: the queue worker, the runs'
    stages and the Ray instances they start (Ray's processes inherit the stage's cwd)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:100]
        except OSError:
            continue  # gone, or not ours to read
        if cwd == str(path) or cwd.startswith(f"{path}/"):
            found.append(f"{pid} {cmd}")
    return found


def main_job_metric(exp, name):
    """The main job's metric `name` in one `dvc exp show --json` row, found by name in
    whichever metrics file holds it (so it does not depend on the file's path)."""
    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    values = [v for path, m in exp["data"]["metrics"].items() if not path.startswith(OTHER_PIPELINES)
              for k, v in leaves(m.get("data") or {}) if k.split(".")[-1] == name]
    assert len(values) == 1, f"{name}: {values} in {list(exp['data']['metrics'])}"
    return values[0]


def test_queue_runs_a_grid_and_exp_show_reads_it(repo):
    # A code change queued with the runs is what they execute, not the working tree's code
    # (which an editable install would otherwise import): `python -m stages.X` in the copy
    # imports the copy's pipeline/, with no sys.path edit in the scripts.
    driver = repo / "pipeline/training/driver.py"
    driver.write_text(driver.read_text() + "\nprint('QUEUED-CODE-MARKER', flush=True)\n")
    out = sh("dvc exp run --queue dvc.yaml -S 'model.moe_vae.balancing_weight="
             + ",".join(map(str, GRID)) + "'", repo)
    assert out.count("Queued experiment") == 2
    sh("git checkout -q -- pipeline/training/driver.py", repo)  # the workspace goes back
    names = list(queue_table(repo))
    started = time.monotonic()
    try:
        # One worker: runs go one after another, each with the machine's 2 cores.
        sh("dvc queue start -j 1", repo)
        while (status := queue_table(repo)) and any(s in ("Queued", "Running") for s in status.values()):
            if time.monotonic() - started > 600:  # two tiny runs: 2-5 min on 2 busy cores
                break
            time.sleep(3)
        logs = {n: sh(f"dvc queue logs {n}", repo) for n in names}
        shown = "\n".join(f"--- dvc queue logs {n}\n{text[-4000:]}" for n, text in logs.items())
        assert set(status.values()) == {"Success"}, f"queue status {status} after "\
            f"{time.monotonic() - started:.0f} s\n{shown}"
        print(f"queue: {len(names)} runs in {time.monotonic() - started:.0f} s")
    finally:
        sh("dvc queue stop --kill", repo)
        deadline = time.monotonic() + 30
        while (left := processes_in(repo)) and time.monotonic() < deadline:
            time.sleep(1)
    assert not left, "still running after `dvc queue stop`:\n" + "\n".join(left)

    for name, text in logs.items():
        # Each run starts (and ends) its own local Ray on loopback; prepare is not rerun:
        # its shards come from the DVC cache, as data/raw/ never reaches the queue's copies.
        assert "ray: started a local instance on 127.0.0.1" in text, text
        assert "QUEUED-CODE-MARKER" in text, text
        assert "Running stage 'train'" in text and "Running stage 'prepare'" not in text, text
        # DVC's only warnings: train's and evaluate's outputs have no hash in the commit's
        # dvc.lock (those stages never ran there), so the run's checkout skips them.
        warnings = [line for line in text.splitlines() if "WARNING" in line
                    and "No file hash info found" not in line]
        assert not warnings and "Traceback" not in text, text

    rows = json.loads(sh("dvc exp show --json", repo))
    exps = [rev for row in rows for e in row.get("experiments") or [] for rev in e["revs"]]
    by_weight = {rev["data"]["params"]["params.yaml"]["data"]["model"]["moe_vae"]["balancing_weight"]: rev
                 for rev in exps}
    assert sorted(by_weight) == sorted(GRID) and {r["name"] for r in exps} == set(names)
    for weight, exp in sorted(by_weight.items()):
        acc = main_job_metric(exp, "cluster_accuracy")
        ll = main_job_metric(exp, "test_log_likelihood")
        assert 0 <= acc <= 1 and math.isfinite(ll) and ll < 0, (weight, acc, ll)
        print(f"{exp['name']}: balancing_weight {weight}  cluster_accuracy {acc:.4f}  "
              f"test_log_likelihood {ll:.2f}")
