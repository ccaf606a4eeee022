"""Atomic output helpers: a reader sees the old file or the new one, never half of one."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Union

from pipeline.core.failures import is_write_failure, no_space, write_error

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto `path` only if the block succeeds.

    Works for files and directories (an existing directory at `path` is replaced).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    except OSError as e:
        raise write_error(path, e) from e
    try:
        try:
            yield tmp
        except (OSError, RuntimeError) as e:  # a full disk, say: one line naming `path`
            if not writing(e, tmp):
                raise
            raise write_error(path, e) from e
        if path.is_dir() and not path.is_symlink():
            old = tmp.parent / (path.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def writing(e: BaseException, tmp: Path) -> bool:
    """`e` came from writing the temporary output `tmp` (not from reading an input)."""
    inside = str(getattr(e, "filename", "") or "").startswith(str(tmp.parent))
    return no_space(e) or (is_write_failure(e) and (inside or isinstance(e, RuntimeError)))


def write_json(path: PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")


def write_rows_csv(path: PathLike, rows: List[Dict]) -> None:
    keys = list(rows[0]) if rows else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
