"""Run the DVC pipeline on a Ray cluster through the Jobs API and bring its outputs back.

    python -m pipeline.cluster.submit [--address http://127.0.0.1:8265] [--include data/raw] [-- dvc repro]

On this machine: the project (git-tracked and untracked-but-not-ignored files, plus any
`--include` paths) is staged into a temporary folder and uploaded as the job's
working_dir. Ray's own upload would drop every git-ignored path, which would silently
lose `--include`d data, so we choose the files and tell Ray not to filter again.

On the cluster (`--remote`, the job's entrypoint): the command runs with this
interpreter first on PATH (dvc.yaml's `python ...` must be the env that has the
project), then the declared DVC outputs (outs, metrics, plots of dvc.yaml) and dvc.lock
are packed into one tar.gz. It comes back either in the job log (default: needs nothing
but the Jobs API, fine up to tens of MB) or through `--results`, a folder or URI both
sides can read (s3://, gs://, or a shared mount; for big models).

Back here the tarball's SHA-256 is checked and each output replaces its local copy
atomically, dvc.lock last, so `dvc metrics diff` compares the cluster run with HEAD.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterable, List, Optional

import yaml

from pipeline.cluster.bundle import MARK, SubmitError, from_log, log_frames, pack, unpack
from pipeline.core.storage import get_bytes, join, put_bytes

DEFAULT_OUTS = ["metrics", "plots", "models", "compare", "sweep", "results", "dvc.lock"]
PIPELINES = ["dvc.yaml", "compare/dvc.yaml", "results/dvc.yaml", "sweep/dvc.yaml"]  # every dvc.yaml whose outputs can come back


def declared_outputs(dvc_yaml: Path, root: Optional[Path] = None) -> List[str]:
    """Every outs/metrics/plots path of every stage in dvc_yaml, relative to the project
    `root` (default: dvc_yaml's folder; a stage's `wdir` is honoured). `foreach` stages
    are expanded over their list and `matrix` stages over every combination, each given
    inline or as `${section.key}` of the project's params.yaml."""
    root = Path(root or dvc_yaml.parent)
    doc = yaml.safe_load(dvc_yaml.read_text()) or {}
    paths = []
    for stage in (doc.get("stages") or {}).values():
        items, body = [None], stage
        if "foreach" in stage:
            items, body = _list(stage["foreach"], root), stage.get("do") or {}
        elif "matrix" in stage:
            axes = {k: _list(v, root) for k, v in stage["matrix"].items()}
            items = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
        wdir = (dvc_yaml.parent / body.get("wdir", ".")).resolve().relative_to(root.resolve())
        for item in items:
            for field in ("outs", "metrics", "plots"):
                for entry in body.get(field) or []:
                    path = _substitute(entry if isinstance(entry, str) else next(iter(entry)), item)
                    paths.append((wdir / path).as_posix())
    return paths


def _substitute(path: str, item) -> str:
    if isinstance(item, dict):
        for key, value in item.items():
            path = path.replace("${item.%s}" % key, str(value))
        return path
    return path if item is None else path.replace("${item}", str(item))


def _list(spec, root: Path) -> list:
    if isinstance(spec, str) and spec.startswith("${") and spec.endswith("}"):
        value = yaml.safe_load((root / "params.yaml").read_text()) or {}
        for key in spec[2:-1].split("."):
            value = value[key]
        spec = value
    return list(spec)


def selected(paths: Iterable[str], prefixes: Iterable[str]) -> List[str]:
    prefixes = [p.rstrip("/") for p in prefixes]
    return [p for p in paths if any(p == q or p.startswith(q + "/") for q in prefixes)]


def outputs_of(root: Path, prefixes: Iterable[str]) -> List[str]:
    """The declared outputs (and dvc.lock files) under `prefixes`, as in --outs."""
    declared = [p for name in PIPELINES if (root / name).exists()
                for p in declared_outputs(root / name, root)]
    locks = [str(Path(name).with_name("dvc.lock")) for name in PIPELINES]
    return selected(declared, prefixes) + [p for p in locks if "dvc.lock" in prefixes]


def remote(args: argparse.Namespace) -> int:
    """Job entrypoint on the cluster: run the command, then publish the outputs."""
    root = Path.cwd()
    if args.shared_dir:
        # The job's working dir exists on the head only, and `prepare` writes data/shards
        # into it; running from a folder every node mounts at the same path lets each
        # training worker read its shards there.
        shared = Path(args.shared_dir) / args.job_id
        shutil.copytree(root, shared, symlinks=True)
        os.chdir(shared)
        root = shared
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    # the stage scripts import the uploaded pipeline/, also where an older copy is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    if not (root / ".git").exists():
        # The upload carries no .git; without it DVC needs no_scm. config.local is ours
        # to write in this throwaway copy and never travels back.
        (root / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")
    command = args.command or ["dvc", "repro"]
    if command[0] == "dvc":  # the dvc of this interpreter, whatever PATH says
        command = [sys.executable, "-m", "dvc", *command[1:]]
    print(f"submit: running {shlex.join(command)} in {root}", flush=True)
    rc = subprocess.call(command, env=env)
    if rc != 0:
        print(f"submit: the command exited with {rc}; no outputs published", flush=True)
        return rc
    outs = [p for p in outputs_of(root, args.outs) if (root / p).exists()]
    data = pack(root, outs)
    if args.results:
        uri = join(args.results, f"{args.job_id}.tar.gz")
        put_bytes(uri, data)
        print(f"submit: outputs bundle at {uri}", flush=True)
    else:
        print("\n".join(log_frames(data)), flush=True)
    print(f"submit: published {len(data) / 1e6:.1f} MB of outputs: {', '.join(outs)}", flush=True)
    if args.shared_dir:
        shutil.rmtree(root, ignore_errors=True)  # shards are reproducible; kept on failure only
    return 0


def stage_workspace(root: Path, include: Iterable[str], dest: Path) -> int:
    """Copy what git would version (tracked + untracked-not-ignored) plus `include`."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                                check=True, capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError) as e:
        raise SubmitError(f"{root} is not a git work tree ({e}); run from the project root") from e
    files = [f for f in listed if f and (root / f).is_file()]
    for inc in include:
        p = root / inc
        if not p.exists():
            raise SubmitError(f"--include {inc}: no such path in {root}; give a path relative to it")
        files += [str(f.relative_to(root)) for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    for rel in set(files):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    return len(set(files))


async def stream(client, job_id: str) -> None:
    """Echo the job log, minus the bundle's lines (chunks may end mid-line)."""
    pending = ""
    async for chunk in client.tail_job_logs(job_id):
        *lines, pending = (pending + chunk).split("\n")
        sys.stdout.write("".join(ln + "\n" for ln in lines if not ln.startswith(MARK)))
        sys.stdout.flush()
    if pending and not pending.startswith(MARK):
        print(pending, flush=True)


def submit(args: argparse.Namespace) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    root = Path.cwd()
    if not (root / "dvc.yaml").exists():
        raise SubmitError(f"no dvc.yaml in {root}; run from the project root")
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    job_id = f"moe-vae-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    entry = [args.python, "-m", "pipeline.cluster.submit", "--remote", "--job-id", job_id,
             "--outs", *args.outs, *(["--results", args.results] if args.results else []),
             *(["--shared-dir", args.shared_dir] if args.shared_dir else []),
             "--", *(args.command or ["dvc", "repro"])]
    env_vars = dict(kv.split("=", 1) for kv in args.env)
    with tempfile.TemporaryDirectory(prefix="moe-vae-submit-") as stage:
        n = stage_workspace(root, args.include, Path(stage))
        os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"  # already filtered above
        client = JobSubmissionClient(address)
        client.submit_job(entrypoint=shlex.join(entry), submission_id=job_id,
                          runtime_env={"working_dir": stage, "env_vars": env_vars})
    print(f"submit: job {job_id} submitted to {address} ({n} files uploaded)", flush=True)
    asyncio.run(stream(client, job_id))
    status = client.get_job_status(job_id)
    while not status.is_terminal():  # the log stream can end a moment before the status
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    if status != JobStatus.SUCCEEDED:
        raise SubmitError(f"job {job_id} ended {status.value}; its log is above "
                          f"(again: ray job logs --address {address} {job_id})")
    if args.results:
        uri = join(args.results, f"{job_id}.tar.gz")
        try:
            data = get_bytes(uri)
        except Exception as e:  # noqa: BLE001  (pyarrow raises OSError subclasses and more)
            raise SubmitError(f"cannot read the outputs at {uri} from here ({e}); "
                              f"give --results a location this machine can read") from e
    else:
        data = from_log(client.get_job_logs(job_id))
    written = unpack(data, root, outputs_of(root, args.outs))
    print(f"submit: wrote {', '.join(written)} into {root}", flush=True)
    return 0


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", help="Jobs API URL (default: $RAY_API_SERVER_ADDRESS or "
                                     "http://127.0.0.1:8265, e.g. via `ray dashboard cluster.yaml`)")
    p.add_argument("--include", nargs="*", default=[], metavar="PATH",
                   help="git-ignored paths to upload too, e.g. data/raw")
    p.add_argument("--outs", nargs="*", default=DEFAULT_OUTS, metavar="PREFIX",
                   help=f"outputs to bring back (default: {' '.join(DEFAULT_OUTS)})")
    p.add_argument("--results", help="folder or URI both sides can read, for big outputs "
                                     "(default: carried in the job log)")
    p.add_argument("--shared-dir", metavar="DIR",
                   help="run in DIR/<job-id> on the cluster, a filesystem every node mounts at "
                        "the same path (needed for >1 node: workers read data/shards there)")
    p.add_argument("--python", default="python",
                   help="interpreter on the cluster that has this project installed")
    p.add_argument("--env", nargs="*", default=[], metavar="K=V", help="env vars for the job")
    p.add_argument("--remote", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--job-id", default="local", help=argparse.SUPPRESS)
    p.add_argument("command", nargs="*", help="command to run there (default: dvc repro)")
    args = p.parse_args(argv)
    for kv in args.env:
        if "=" not in kv:
            p.error(f"--env {kv!r} is not K=V; write e.g. --env GLOO_SOCKET_IFNAME=eth0")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse(argv)
    try:
        sys.exit(remote(args) if args.remote else submit(args))
    except SubmitError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
