"""Small file-system primitives that make writes crash-safe.

The pattern throughout (after pip's ``adjacent_tmp_file``): write a temp file
in the same directory, fsync it, ``os.replace`` it into place, fsync the
directory. A reader sees either the old name or the complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Every temp name we create starts with this, so cleanup can find orphans.
TMP_PREFIX = ".part-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def clean_path_on_failure(path: Path) -> Iterator[None]:
    """Remove ``path`` if the block raises (including KeyboardInterrupt)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise


def adjacent_tmp(directory: Path, suffix: str = "") -> tuple[int, Path]:
    import tempfile

    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=directory)
    return fd, Path(name)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data``; the content is on disk before the name.

    ``sync_dir=False`` leaves the directory's fsync to the caller, who may
    rename several things and make them durable with one fsync_dir.
    """
    fd, tmp = adjacent_tmp(path.parent)
    with clean_path_on_failure(tmp):
        try:
            os.write(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any, mode: int = 0o644, sync_dir: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode(), mode, sync_dir)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it is missing or not valid JSON (a crash artefact)."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def atomic_symlink(target: str, link: Path, sync_dir: bool = True) -> None:
    """Point ``link`` at ``target`` with no moment where it is missing or half-made."""
    for attempt in range(100):
        tmp = link.parent / f"{TMP_PREFIX}{os.getpid()}-{attempt}{link.name}"
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 stale names from our own pid
        raise FileExistsError(f"cannot create a temp symlink next to {link}")
    with clean_path_on_failure(tmp):
        os.replace(tmp, link)
    if sync_dir:
        fsync_dir(link.parent)


def remove_quietly(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def allocated_bytes(st: os.stat_result) -> int:
    """Bytes a file really occupies on disk (holes excluded)."""
    return st.st_blocks * 512
