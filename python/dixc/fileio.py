"""Crash-safe file writing shared by data generation, functional files and training checkpoints.

A file is written under a temporary name next to its destination, flushed to disk, and renamed
over the destination in one step (``os.replace`` is atomic on POSIX), so a killed process leaves
either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

TMP_SUFFIX = ".tmp"


def fsync_path(path: str) -> None:
    """Flushes ``path`` (a file or a directory) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flushes a directory entry; silently skipped where the file system does not allow it."""
    with contextlib.suppress(OSError):
        fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path to write; on success it is fsynced and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched::

        with atomic_path("model.safetensors") as tmp:
            safetensors.torch.save_file(tensors, tmp)
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}{TMP_SUFFIX}"
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
