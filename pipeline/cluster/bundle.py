"""The output bundle a cluster job sends back: a tar.gz of the declared DVC outputs,
carried in the job log (base64 lines between markers, SHA-256 checked) or through a
shared location, and unpacked here so that it can write nothing but those outputs."""
from __future__ import annotations

import base64
import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import Iterable, List

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path

MARK = "@@moe-vae-outs"
CHUNK = 4096  # base64 characters per log line


class SubmitError(PipelineError):
    """One-line reason a submission failed."""


def pack(root: Path, paths: Iterable[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in paths:
            if (root / rel).exists():
                tar.add(root / rel, arcname=rel)
    return buf.getvalue()


def check_members(tar: tarfile.TarFile, allowed: Iterable[str]) -> List[str]:
    """The declared outputs the bundle holds. Every member must be a plain file or folder
    at or under one of `allowed` (the outputs this project's dvc.yaml files declare):
    anything else (`.`, `..`, absolute paths, links, devices, undeclared paths) is refused."""
    allowed = {str(PurePosixPath(a)) for a in allowed}
    found = set()
    for m in tar.getmembers():
        name = PurePosixPath(m.name)
        inside = [a for a in allowed if name == PurePosixPath(a) or PurePosixPath(a) in name.parents]
        if (not (m.isfile() or m.isdir()) or name.is_absolute() or ".." in name.parts
                or m.name in ("", ".") or not inside):
            raise SubmitError(f"output bundle member {m.name!r} is not a declared output of this "
                              f"project (a plain file or folder under {', '.join(sorted(allowed))}); "
                              f"refusing to unpack the bundle (was it tampered with?)")
        found.update(inside)
    return sorted(found)


def unpack(data: bytes, workspace: Path, allowed: Iterable[str]) -> List[str]:
    """Replace each declared output the bundle holds in `workspace` atomically, dvc.lock
    files last; nothing is written when any member is refused."""
    with tempfile.TemporaryDirectory(dir=workspace, prefix=".submit-") as tmp:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                outs = check_members(tar, allowed)
                # members are checked above; the "data" filter (3.11.4+) checks again
                tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SubmitError(f"the output bundle cannot be unpacked ({e}); rerun the job") from e
        written = []
        for rel in sorted(outs, key=lambda r: Path(r).name == "dvc.lock"):
            with atomic_path(workspace / rel) as dest:
                shutil.move(Path(tmp) / rel, dest)
            written.append(rel)
    return written


def log_frames(data: bytes) -> List[str]:
    text = base64.b64encode(data).decode()
    lines = [f"{MARK} begin {hashlib.sha256(data).hexdigest()}"]
    lines += [f"{MARK} {text[i:i + CHUNK]}" for i in range(0, len(text), CHUNK)]
    return lines + [f"{MARK} end"]


def from_log(log: str) -> bytes:
    body = [ln.split(" ", 1)[1] for ln in log.splitlines() if ln.startswith(MARK + " ")]
    if not body or not body[0].startswith("begin ") or body[-1] != "end":
        raise SubmitError("the job log holds no complete output bundle; see the log above")
    data = base64.b64decode("".join(body[1:-1]))
    if hashlib.sha256(data).hexdigest() != body[0].split()[1]:
        raise SubmitError("the output bundle in the job log is corrupt (SHA-256 mismatch); rerun")
    return data
