"""The Ray Job entrypoint: run the pipeline as a DVC experiment and push it back.

    export RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES=.venv,venv,__pycache__   # let .git travel
    ray job submit --working-dir . -- python -m pipeline.cluster.job NAME [--git-remote origin]
        [--shared-dir DIR] [--trials sweep] [-- dvc exp run arguments, e.g. evaluate or -S train.epochs=5]
    dvc exp pull origin NAME && dvc exp apply NAME          # then, on your machine

A sweep (`-- sweep/dvc.yaml`) with `--trials sweep` also brings its trials back: after the
run, each becomes an experiment NAME-<trial> (pipeline.sweep.exps, the same as on a
workstation) and is pushed with it; `dvc exp pull origin NAME-00003` fetches one.

Ray uploads the project (git-ignored paths stay behind), streams the log and
makes `ray job submit` exit non-zero when this does. DVC runs the experiment and moves it:
`dvc exp push` sends its git commit (dvc.lock, params, metrics JSON) to the git remote and
its cached outputs (model, plots) to the default DVC remote. This module adds only what
neither does:

- it checks both remotes before training, not after: a wrong git remote or a DVC remote
  the cluster cannot reach would otherwise fail at `dvc exp push`, with the run lost;
- it runs from a fresh copy of the working dir: Ray unpacks identical uploads into one
  folder, which jobs would share (and fill with outputs) otherwise. With `--shared-dir`
  the copy goes to a folder every node mounts: Ray unpacks on the head's own disk, and
  training workers on other nodes read the `prepare` stage's shards by path.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from pipeline.core.errors import PipelineError


class JobError(PipelineError):
    """One-line reason the job cannot run or publish."""


def dvc(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    # the dvc of this interpreter: the one dvc.yaml's `python` finds on the same PATH
    return subprocess.run([sys.executable, "-m", "dvc", *args], text=True,
                          capture_output=capture)


def check_remotes(root: Path, git_remote: str) -> None:
    """Fail now when `dvc exp push` would fail after the run."""
    if not (root / ".git").is_dir():
        raise JobError(f"no .git in {root}: Ray leaves it out unless ray job submit runs with "
                       f"RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES=.venv,venv,__pycache__")
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        url = repo.config["remote"].get(name, {}).get("url", "") if name else ""
    if not url:
        raise JobError("no default DVC remote in .dvc/config (.dvc/config.local does not travel): "
                       "add one both sides reach, e.g. dvc remote add -d shared s3://bucket/moe-vae")
    if "://" not in url and not Path(url).is_dir():
        raise JobError(f"the default DVC remote {name!r} is {url} on the cluster, which does not "
                       f"exist there: use a folder every machine mounts (create it first) or a bucket URI")
    listed = dvc("exp", "list", git_remote, "--name-only", capture=True)
    if listed.returncode != 0:
        why = (listed.stderr.strip().splitlines() or ["no message"])[-1]
        raise JobError(f"git remote {git_remote!r} cannot be read from the cluster ({why}); "
                       f"pass --git-remote with a name in .git/config or a URL the cluster can push to")


def run(name: str, git_remote: str, shared_dir: Optional[str], exp_args: List[str],
        trials: List[str] = ()) -> int:
    root = Path.cwd()
    check_remotes(root, git_remote)
    if shared_dir and not Path(shared_dir).is_dir():
        raise JobError(f"--shared-dir {shared_dir} does not exist on the head; "
                       f"give a folder every node mounts at the same path")
    parent = Path(shared_dir) if shared_dir else Path(tempfile.mkdtemp(prefix="moe-vae-job-"))
    copy = parent / name
    if copy.exists():
        raise JobError(f"{copy} already exists; pick another experiment name or remove it")
    shutil.copytree(root, copy, symlinks=True)
    os.chdir(copy)
    # the stages import pipeline/ from the copy, as Ray's PYTHONPATH does from the original
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")]))
    print(f"job: dvc exp run --name {name} in {copy}", flush=True)
    rc = dvc("exp", "run", "--name", name, *exp_args).returncode
    if rc == 0:
        rc = dvc("exp", "push", git_remote, name).returncode
    for spec in trials if rc == 0 else ():  # DIR or DIR=PRESET: a sweep's trials, on the run's workspace
        from pipeline.sweep.exps import save_sweep

        sweep_dir, _, preset = spec.partition("=")
        names = save_sweep(Path(sweep_dir), preset or None,
                           prefix=f"{name}-{preset}" if preset else name)
        rc = dvc("exp", "push", git_remote, *names).returncode
        if rc:
            break
    if rc == 0:  # on failure the copy stays, to look into
        shutil.rmtree(copy if shared_dir else parent, ignore_errors=True)
    return rc


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the experiment's name, also what you `dvc exp pull`")
    p.add_argument("--git-remote", default="origin", help="git remote name or URL (default: origin)")
    p.add_argument("--shared-dir", help="run from DIR/NAME, a folder every node mounts (for >1 node; "
                                        "default: a temporary folder on the head)")
    p.add_argument("--trials", action="append", default=[], metavar="DIR[=PRESET]",
                   help="after the run, save the sweep in DIR's trials as experiments NAME-<trial> "
                        "and push them too (DIR=PRESET for a --preset sweep); repeatable")
    p.epilog = "Arguments after -- go to `dvc exp run`."
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    try:
        sys.exit(run(args.name, args.git_remote, args.shared_dir, argv[cut + 1:], args.trials))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
