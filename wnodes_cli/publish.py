"""Publish a new version of an image's master on shared storage, or roll back.

The master path in the config is a symlink to the current version, in the
same directory: ``sl7.qcow2 -> sl7-20261124T074500.qcow2``. Publishing:

1. copies FILE to a temp name in that directory, fsyncs it and checks its
   format (the config's) and that it has no backing file;
2. writes ``<version>.sha256`` beside it (what a fetch verifies against);
3. renames the copy to its versioned name;
4. points a new symlink (temp name) at it and renames it over the master.

At no moment does the master point at a missing or half-written file: it
points at the old version until the rename in step 4, and at the complete,
checksummed new one after it. No lock is taken on shared storage (GPFS and
NFS locks are not to be relied on): every name is unique, and the flip is one
atomic rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from pathlib import Path
from typing import NamedTuple

from wnodes_cli import fsutil
from wnodes_cli.config import Config, Image
from wnodes_cli.errors import CopyError, MasterUnavailable, NotFound, UsageError

STAMP = "%Y%m%dT%H%M%S"


class Published(NamedTuple):
    image: str
    master: str
    old: str | None  # the version the master pointed at before
    new: str
    sha256: str | None
    removed: tuple[str, ...]  # old versions removed by --keep

    def as_json(self) -> dict[str, object]:
        d = self._asdict()
        d["removed"] = list(self.removed)
        return d


def _versions(img: Image) -> list[Path]:
    """The published versions of an image, oldest first (their names sort by time)."""
    stem, suffix = _stem(img)
    pattern = re.compile(rf"^{re.escape(stem)}-(\d{{8}}T\d{{6}})(?:-(\d+))?{re.escape(suffix)}$")
    d = img.master.parent

    def order(name: str) -> tuple[str, int]:
        m = pattern.match(name)
        assert m is not None
        return m.group(1), int(m.group(2) or 1)  # a second publish in the same second is -2

    try:
        return [d / n for n in sorted((n for n in os.listdir(d) if pattern.match(n)), key=order)]
    except FileNotFoundError:
        raise MasterUnavailable(f"directory {d} of image {img.name!r}'s master does not exist; create it") from None


def _stem(img: Image) -> tuple[str, str]:
    name = img.master.name
    suffix = "".join(img.master.suffixes[-1:])
    return name[: len(name) - len(suffix)] if suffix else name, suffix


def _current(img: Image) -> str | None:
    try:
        return os.readlink(img.master)
    except FileNotFoundError:
        return None
    except OSError:
        raise UsageError(f"master {img.master} of image {img.name!r} is not a symlink; publish needs one") from None


def _flip(img: Image, target: str) -> None:
    """Point the master at ``target`` (a name in the same directory) in one rename."""
    if img.master.exists() and not img.master.is_symlink():
        raise UsageError(f"master {img.master} of image {img.name!r} is a regular file; make it a symlink first")
    fsutil.atomic_symlink(target, img.master)


def publish(config: Config, image: str, source: Path, keep: int | None = None) -> Published:
    img = config.image(image)
    if not source.is_file():
        raise NotFound(f"{source} is not a file; give the path of the new image")
    from wnodes_cli.tools import probe

    found = probe(source)
    if found.format != img.format:
        raise UsageError(f"{source} is {found.format}, but image {image!r} is {img.format} in {config.path}")
    if found.backing or found.external_data:
        raise UsageError(f"{source} depends on another file; flatten it first (qemu-img convert)")
    old = _current(img)
    stem, suffix = _stem(img)
    d = img.master.parent
    stamp = time.strftime(STAMP, time.gmtime())
    name = f"{stem}-{stamp}{suffix}"
    n = 1
    while (d / name).exists():
        n += 1
        name = f"{stem}-{stamp}-{n}{suffix}"
    final = d / name

    from wnodes_cli.copier import copy_sparse

    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        fd, tmp = fsutil.adjacent_tmp(d, suffix=suffix)
        with fsutil.clean_path_on_failure(tmp):
            try:
                copy_sparse(src, fd, size)
                os.fsync(fd)
            except OSError as exc:
                raise CopyError(f"copying {source} to {d} failed: {exc.strerror or exc}") from None
            finally:
                os.close(fd)
            with open(tmp, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            os.chmod(tmp, 0o444)
            # The checksum is in place before the version's name exists, so a
            # node never sees the version without what it is verified against.
            fsutil.atomic_write_bytes(Path(str(final) + ".sha256"), f"{digest}  {name}\n".encode(), 0o444)
            os.replace(tmp, final)
    finally:
        os.close(src)
    fsutil.fsync_dir(d)
    _flip(img, name)
    removed = _prune(img, keep) if keep is not None else ()
    return Published(image, str(img.master), old, name, digest, removed)


def _prune(img: Image, keep: int) -> tuple[str, ...]:
    """Keep the ``keep`` newest versions besides the current one; never the current one."""
    current = _current(img)
    older = [p for p in _versions(img) if p.name != current]
    doomed = older[: max(0, len(older) - keep)]
    for p in doomed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(str(p) + ".sha256"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    return tuple(p.name for p in doomed)


def rollback(config: Config, image: str) -> Published:
    """Point the master back at the version published before the current one."""
    img = config.image(image)
    current = _current(img)
    versions = [p.name for p in _versions(img)]
    if current not in versions:
        raise NotFound(
            f"master {img.master} points at {current!r}, which is not a published version of {image!r}; "
            f"nothing to roll back to"
        )
    i = versions.index(current)
    if i == 0:
        raise NotFound(
            f"{current} is the oldest version of {image!r} kept in {img.master.parent}; nothing to roll back to"
        )
    previous = versions[i - 1]
    _flip(img, previous)
    side = img.master.parent / f"{previous}.sha256"
    sha = side.read_text().split()[0] if side.exists() else None
    return Published(image, str(img.master), current, previous, sha, ())
