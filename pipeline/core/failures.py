"""Failures the project did not raise itself (a full disk, memory, Arrow), as one line.

`describe(e)` turns such an exception into the line a stage prints and says whether a
retry could succeed: Ray Train's FailureConfig retries only what can (a lost connection,
a node that died), never a full disk or memory that the same checkpoint would meet again.
`write_error(path, e)` names the output that could not be written.
"""
from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Optional, Tuple

from pipeline.core.errors import PipelineError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class WriteError(PipelineError, OSError):
    """An output could not be written; the message names it, the reason and the fix."""


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def no_space(e: BaseException) -> bool:
    """A full disk or quota: errno 28/122, also when pyarrow or torch's zip writer (which
    lose the errno: `PytorchStreamWriter failed writing file`) report it in words."""
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return True
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


def out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()))


def free_bytes(path: Path) -> Optional[int]:
    """Free bytes on the filesystem holding `path` (its nearest existing parent), or None."""
    for parent in (path, *path.parents):
        if parent.exists():
            try:
                return shutil.disk_usage(parent).free
            except OSError:
                return None
    return None


def write_error(path, e: BaseException, elsewhere: str = "") -> WriteError:
    """The one-line error for an output `path` whose write raised `e`; `elsewhere`: the
    param that moves it, if any (train.storage_path)."""
    path = Path(str(path))
    free = free_bytes(path)
    # torch's zip writer loses the errno ("iostream error"): a disk left with under 1 MB
    # by the half-written file tells the same
    if no_space(e) or (free is not None and free < 2**20 and is_write_failure(e)):
        move = f" or set {elsewhere} to another disk" if elsewhere else ""
        left = f" ({free / 2**20:.1f} MB free there)" if free is not None else ""
        return WriteError(f"no space left on the device while writing {path}{left}; free some "
                          f"space{move} and rerun (nothing half-written was kept)")
    reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
    return WriteError(f"could not write {path}: {reason}; check the folder and rerun")


def is_write_failure(e: BaseException) -> bool:
    """An exception a write raised because the write itself failed (not a bug in the
    caller): OSError, or torch.save's RuntimeError from its zip writer."""
    words = ("PytorchStreamWriter", "file write failed", "inline_container", "iostream error")
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and (
        any(w in str(e) for w in words) or no_space(e)))


def describe(e: BaseException, where: Optional[str] = None) -> Tuple[str, bool]:
    """(one line, retryable) for an exception that is not a PipelineError. `where`: the
    folder being written when it happened (a checkpoint's storage), if known."""
    if isinstance(e, PipelineError):
        return str(e), False
    if no_space(e):
        return str(write_error(where or getattr(e, "filename", None) or "an output", e)), False
    if out_of_memory(e):
        return (f"out of memory ({first_line(e)}); lower train.batch_size or the model's "
                f"sizes (model.net.hidden, model.net.latent_dim, the experts)"), False
    try:
        import pyarrow

        if isinstance(e, pyarrow.ArrowException) and not isinstance(e, OSError):
            return f"reading the shards failed ({first_line(e)}); rerun the prepare stage", False
    except ImportError:  # pragma: no cover
        pass
    retryable = isinstance(e, (ConnectionError, TimeoutError)) or (
        isinstance(e, OSError) and e.errno not in (errno.EACCES, errno.EROFS, errno.ENOENT))
    return f"{type(e).__name__}: {first_line(e)}", retryable

