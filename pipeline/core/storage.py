"""`train.storage_path` as a local folder, a shared-filesystem path or a cloud URI.

Ray Train resolves a storage path with `pyarrow.fs.FileSystem.from_uri`, so any scheme
pyarrow knows (s3://, gs://, hdfs://, file://) works there; these helpers apply the same
rule on our side (naming the run directory, deleting it after success) so a URI is never mangled by `Path(...).resolve()`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Tuple

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(path: str) -> bool:
    return bool(_URI.match(str(path)))


def resolve_storage(path: str) -> str:
    """A URI unchanged; a local or shared path made absolute (workers change directory)."""
    return str(path).rstrip("/") if is_uri(path) else str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def filesystem(uri: str) -> Tuple["object", str]:
    """(pyarrow filesystem, path inside it) for a URI or an absolute local path."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri if is_uri(uri) else str(Path(uri).resolve()))


def delete_tree(uri: str) -> str:
    """Remove a finished run's checkpoints; returns '' or a one-line reason it was kept.

    Never raises: a leftover run directory only costs space, not correctness.
    """
    try:
        fs, path = filesystem(uri)
        fs.delete_dir(path)
        return ""
    except FileNotFoundError:
        return ""
    except Exception as e:  # noqa: BLE001  (e.g. no credentials for the bucket here)
        return f"could not delete {uri} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
