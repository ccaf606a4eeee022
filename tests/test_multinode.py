"""Two real Ray nodes (network namespaces): cross-node DDP, and `ray job submit` running the
pipeline there as a DVC experiment that `dvc exp pull` brings back, equal to a local run."""
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.multinode import HEAD_IP, WORKER_IP, TwoNodeCluster, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "ok")]

DDP_DRIVER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import ray, ray.train, torch
    from ray.train.torch import TorchTrainer
    from pipeline.core.schema import to_dict
    from pipeline.params import params_from_dict
    from pipeline.training.loop import STATE_FILE
    from pipeline.training.worker import train_loop_per_worker

    address, shard_dir, out = sys.argv[1:4]
    ray.init(address=address)
    deadline = time.time() + 60
    while sum(n["Alive"] for n in ray.nodes()) < 2:
        assert time.time() < deadline, "the second node never joined"
        time.sleep(0.5)

    def loop(config):
        import torch.distributed as dist
        # Each rank contributes the last octet of its node's address: the all-gather
        # crosses the veth pair only if the ranks sit on different nodes.
        mine = torch.tensor([float(ray.util.get_node_ip_address().rsplit(".", 1)[1])])
        seen = [torch.zeros(1) for _ in range(dist.get_world_size())]
        dist.all_gather(seen, mine)
        if ray.train.get_context().get_world_rank() == 0:
            Path(config["out"]).write_text(json.dumps(sorted(float(t) for t in seen)))
        train_loop_per_worker(config)

    params = params_from_dict({"model": {"moe_vae": {"experts": 3}, "net": {"latent_dim": 4, "hidden": 32}},
                               "train": {"epochs": 2, "batch_size": 40, "lr": 3e-3, "num_workers": 2}})
    trainer = TorchTrainer(
        loop, train_loop_config={"params": to_dict(params), "shard_dir": shard_dir, "threads": 1, "out": out},
        scaling_config=ray.train.ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD",
                                               resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="ddp", storage_path=str(Path(out).parent / "storage")))
    result = trainer.fit()
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, weights_only=True)
    print("HISTORY", state["history"])  # already JSON
""")


@pytest.fixture(scope="module")
def cluster():
    # A short folder of its own: Ray's socket paths under it must stay < 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="rt2n-"))
    c = TwoNodeCluster(root)
    try:
        yield c.start()
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not [ns for ns in (c.head_ns, c.worker_ns)
                    if ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout]


def test_ddp_all_reduces_across_two_nodes(cluster, tiny_shards, tmp_path):
    (tmp_path / "driver.py").write_text(DDP_DRIVER)
    out = tmp_path / "gathered.json"
    r = cluster.run([sys.executable, str(tmp_path / "driver.py"), f"{HEAD_IP}:6379", str(tiny_shards), str(out)],
                    cwd=tmp_path, timeout=300, extra_env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # one rank on each node, and gloo's all-gather carried both addresses to rank 0
    assert json.loads(out.read_text()) == [float(HEAD_IP.rsplit(".")[-1]), float(WORKER_IP.rsplit(".")[-1])]
    history = json.loads(r.stdout.split("HISTORY", 1)[1].strip())
    assert [row["epoch"] for row in history] == [1, 2]


def test_a_ray_job_runs_the_pipeline_as_an_experiment_that_dvc_exp_pull_brings_back(cluster, tmp_path, mnist_dir):
    repo, origin, dvc_remote, nfs = (tmp_path / n for n in ("repo", "origin.git", "dvc-remote", "nfs"))
    for d in (repo, dvc_remote, nfs):
        d.mkdir()
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # Raw MNIST from a path both nodes see (the shared-storage route); checkpoints on a
    # path both nodes can write.
    params["data"].update(raw_dir=str(mnist_dir), shards=2, train_limit=600)
    params["model"]["moe_vae"].update(experts=3, manager={})
    params["model"]["net"].update(hidden=32, latent_dim=4)
    params["train"].update(epochs=1, batch_size=50, num_workers=2, storage_path=str(tmp_path / "shared"))
    params["evaluate"].update(iw_samples=20, iw_chunk=20, ll_limit=100)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def sh(cmd, cwd, env=cluster.env):
        r = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}: {r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    # Both "machines" are this one, so a bare repo and a folder are remotes both sides reach.
    sh(f"git init -q --bare {origin}", tmp_path)
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q && "
       f"dvc remote add -d shared {dvc_remote} && git remote add origin {origin} && "
       "git add -A && git commit -qm init && git push -q origin HEAD", repo)

    # The documented command; `python` is the head's, first on the PATH `ray start` had.
    r = cluster.run(["ray", "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".",
                     "--", "python", "-m", "pipeline.cluster.job", "run1", "--shared-dir", str(nfs)],
                    cwd=repo, timeout=600, extra_env={"RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES": ".venv,venv,__pycache__"})
    assert r.returncode == 0, f"{r.stdout[-5000:]}\n{r.stderr[-3000:]}"
    assert f"in {nfs}/run1" in r.stdout and not list(nfs.iterdir())  # ran there, then tidied
    assert "2 worker(s)" in r.stdout  # 1 CPU per node: the two DDP ranks span both nodes
    assert not (repo / "dvc.lock").exists()  # nothing came back by itself

    sh("dvc exp pull origin run1 && dvc exp apply run1", repo)
    cluster_metrics = {s: json.loads((repo / "dvclive" / s / "metrics.json").read_text()) for s in ("train", "evaluate")}
    assert 0 <= cluster_metrics["evaluate"]["cluster_accuracy"] <= 1
    assert cluster_metrics["train"]["epochs"] == 1
    assert (repo / "models/model.pt").stat().st_size > 0  # from the DVC remote
    assert (repo / "dvclive/evaluate/plots/images/latent.png").stat().st_size > 0
    assert {"prepare", "train", "evaluate"} <= set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    diff = json.loads(sh("dvc metrics diff --json", repo))  # the cluster's metrics are new to HEAD
    assert diff["dvclive/evaluate/metrics.json"]["cluster_accuracy"]["new"] == cluster_metrics["evaluate"]["cluster_accuracy"]

    # The same commit run here: a private loopback Ray, no RAY_ADDRESS, the same 2 workers.
    assert not any((tmp_path / "shared").glob("*/checkpoint_*"))  # nothing to resume from
    local_env = {k: v for k, v in cluster.env.items() if k != "GLOO_SOCKET_IFNAME"}
    local_env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    sh(f"git clone -q {origin} local && cd local && dvc repro", tmp_path, env=local_env)
    local_metrics = {s: json.loads((tmp_path / "local/dvclive" / s / "metrics.json").read_text()) for s in cluster_metrics}
    # Bit-equal, not close: same machine, same thread count, and a 2-rank all-reduce sums
    # the same two numbers whichever node each rank sits on.
    assert local_metrics == cluster_metrics, (local_metrics, cluster_metrics)
    assert isinstance(local_metrics["train"]["loss"], float)  # real floats compared
