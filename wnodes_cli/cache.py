"""The node-local image cache: one read-only copy per master version.

Layout under ``cache_dir`` (all on local disk)::

    images/<image>/<key>.<n>.<fmt>        read-only (0444) copy of one master version
    images/<image>/<key>.<n>.<fmt>.json   its metadata; mtime = last used
    images/<image>/current                symlink to the copy new jobs get
    images/<image>/.part-*                a copy in progress (only while the lock is held)
    locks/<image>.lock                    one filelock per image (single flight)
    locks/<image>.owner                   who holds it, for "waiting for ..." messages
    leases/<job>.json                     job -> version; written by snapshot
    run/<job>/                            a job's overlay and console log

Rules that keep it correct under concurrency and crashes:

* A hit reads ``current`` and the metadata, both local: no I/O on shared
  storage (unless the image is ``refresh: on-change``).
* A miss takes the image's lock, then checks again: another process may have
  finished the copy while we waited.
* A copy is written to ``.part-*``, fsynced, verified and chmod 0444 before it
  is renamed into place, so no half copy is ever visible under a real name.
  Leftover ``.part-*`` files are removed by the next holder of the lock.
* Nothing referenced by a lease, an overlay's backing file or an open file
  descriptor is ever deleted, and that is re-checked under the image's lock
  right before deleting (Nova's worst bug was a base deleted under a VM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from wnodes_cli import fsutil
from wnodes_cli.config import Config, Image
from wnodes_cli.errors import (
    CopyError,
    LockTimeout,
    MasterUnavailable,
    NoSpace,
    UnsafePath,
)

if TYPE_CHECKING:
    from filelock import BaseFileLock

log = logging.getLogger("wnodes")

CURRENT = "current"
META = ".json"

#: Called with the total size before a copy; returns a per-chunk advance callback.
ProgressFactory = Callable[[str, int], Callable[[int], None]]


class MasterVersion(NamedTuple):
    """A master's identity: its resolved target, size and mtime."""

    target: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        import hashlib

        digest = hashlib.sha256(f"{self.target}\0{self.size}\0{self.mtime_ns}".encode())
        return digest.hexdigest()[:12]

    @property
    def label(self) -> str:
        return f"{os.path.basename(self.target)}@{self.key}"


class CachedVersion(NamedTuple):
    image: str
    path: Path
    meta: dict[str, Any]

    @property
    def meta_path(self) -> Path:
        return Path(str(self.path) + META)

    @property
    def version(self) -> str:
        return str(self.meta.get("version", "?"))

    @property
    def master(self) -> MasterVersion:
        m = self.meta
        return MasterVersion(str(m.get("target")), int(m.get("size", -1)), int(m.get("mtime_ns", -1)))

    @property
    def invalidated(self) -> bool:
        return bool(self.meta.get("invalidated"))


class FetchResult(NamedTuple):
    image: str
    version: str
    path: Path
    hit: bool
    bytes_copied: int = 0
    seconds: float = 0.0
    waited_seconds: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {
            "image": self.image,
            "version": self.version,
            "path": str(self.path),
            "hit": self.hit,
            "bytes_copied": self.bytes_copied,
            "seconds": round(self.seconds, 6),
            "waited_seconds": round(self.waited_seconds, 6),
        }


class Removal(NamedTuple):
    image: str
    path: Path
    reason: str
    removed: bool  # False in a dry run or when kept
    users: tuple[str, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "image": self.image,
            "path": str(self.path),
            "reason": self.reason,
            "removed": self.removed,
            "users": self.users,
        }


class ImageCache:
    def __init__(
        self,
        config: Config,
        timeout: float | None = None,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.config = config
        self.root = config.cache_dir
        self.timeout = config.lock_timeout if timeout is None else timeout
        self.progress = progress
        self.images_dir = self.root / "images"
        self.locks_dir = self.root / "locks"
        self.leases_dir = self.root / "leases"
        self.run_dir = self.root / "run"

    # -- layout ------------------------------------------------------------

    def check_root(self) -> None:
        """Refuse a cache that someone other than root could tamper with."""
        try:
            st = os.lstat(self.root)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(
                f"cache_dir {self.root} is a symlink; make it a real directory (or point cache_dir at the target)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"cache_dir {self.root} is not a directory; move it away")
        if st.st_mode & 0o022 or st.st_uid not in (0, os.geteuid()):
            raise UnsafePath(
                f"cache_dir {self.root} is writable by others or not owned by root "
                f"(mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid}); chmod 755 and chown root it"
            )

    def ensure_layout(self) -> None:
        self.check_root()
        for d in (self.root, self.images_dir, self.locks_dir, self.leases_dir, self.run_dir):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                if os.path.islink(d) or not os.path.isdir(d):
                    raise UnsafePath(f"{d} is not a directory; remove it so wnodes can recreate it") from None
            except OSError as exc:
                raise UnsafePath(f"cannot create {d}: {exc.strerror}; check cache_dir in {self.config.path}") from None

    def image_dir(self, image: str) -> Path:
        return self.images_dir / image

    # -- locking -----------------------------------------------------------

    def _filelock(self, image: str) -> BaseFileLock:
        from filelock import FileLock

        return FileLock(
            self.locks_dir / f"{image}.lock",
            thread_local=False,
            preserve_lock_file=True,
            fallback_to_soft=False,  # the cache is on local disk: flock must work, fail closed if not
            poll_interval=0.01,
        )

    @contextlib.contextmanager
    def lock(self, image: str, action: str | None = None, timeout: float | None = None) -> Iterator[float]:
        """Hold the image's lock; yields the seconds spent waiting for it.

        ``action`` is noted for waiters at once; a fetch notes it only once it
        knows it must copy (most holders are waiters passing through)."""
        from filelock import Timeout

        self.ensure_layout()
        lk = self._filelock(image)
        limit = self.timeout if timeout is None else timeout
        start = time.monotonic()
        try:
            lk.acquire(timeout=0)
        except Timeout:
            log.warning("waiting for image %s: %s (up to %.0fs)", image, self._owner_text(image), limit)
            try:
                lk.acquire(timeout=limit)
            except Timeout:
                raise LockTimeout(
                    f"gave up waiting {limit:.0f}s for image {image!r}: {self._owner_text(image)}; "
                    f"retry later or raise --timeout"
                ) from None
        waited = time.monotonic() - start
        if action:
            self.note_owner(image, action)
        try:
            yield waited
        finally:
            fsutil.remove_quietly(self.locks_dir / f"{image}.owner")
            lk.release()

    def note_owner(self, image: str, action: str) -> None:
        """Say who holds the lock, for the "waiting for ..." line of others.

        Written only before long work, and not fsynced: it is a hint, and a
        waiter that passes the lock through in microseconds must not pay two
        fsyncs for it.
        """
        with contextlib.suppress(OSError):
            (self.locks_dir / f"{image}.owner").write_text(
                json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "action": action, "since": time.time()})
            )

    @contextlib.contextmanager
    def try_lock(self, image: str) -> Iterator[bool]:
        """Take the lock only if it is free now (eviction must never wait: no deadlocks)."""
        from filelock import Timeout

        lk = self._filelock(image)
        try:
            lk.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lk.release()

    def _owner_text(self, image: str) -> str:
        owner = fsutil.read_json(self.locks_dir / f"{image}.owner")
        if not isinstance(owner, dict):
            return "another process holds its lock"
        since = time.time() - float(owner.get("since", time.time()))
        return f"pid {owner.get('pid')} is running {owner.get('action', '?')} on it for {since:.0f}s"

    # -- reading the cache (no locks, no shared storage) --------------------

    def current(self, image: str) -> CachedVersion | None:
        link = self.image_dir(image) / CURRENT
        try:
            name = os.readlink(link)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if "/" in name:
            return None  # we only ever write bare names; anything else is not ours
        return self._load(image, link.parent / name)

    def _load(self, image: str, path: Path) -> CachedVersion | None:
        meta = fsutil.read_json(Path(str(path) + META))
        if not isinstance(meta, dict) or meta.get("image") != image:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != meta.get("size"):
            return None
        return CachedVersion(image, path, meta)

    def versions(self, image: str) -> list[CachedVersion]:
        d = self.image_dir(image)
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if n.endswith(META) or n == CURRENT or n.startswith(fsutil.TMP_PREFIX):
                continue
            v = self._load(image, d / n)
            if v is not None:
                out.append(v)
        return out

    def cached_images(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.images_dir) if not n.startswith("."))
        except FileNotFoundError:
            return []

    # -- in use ---------------------------------------------------------------

    def users(self) -> dict[str, list[str]]:
        """Every cached file that something depends on -> who depends on it.

        Three independent sources, because a wrongly deleted base image kills
        running VMs: leases (written by snapshot), the backing file recorded in
        each overlay under run/, and open file descriptors of any process.
        """
        from wnodes_cli.tools import backing_file

        users: dict[str, list[str]] = {}

        def add(path: str, who: str) -> None:
            users.setdefault(os.path.realpath(path), []).append(who)

        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.leases_dir):
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    lease = fsutil.read_json(Path(entry.path))
                    if isinstance(lease, dict) and isinstance(lease.get("path"), str):
                        add(lease["path"], f"lease:{lease.get('job', entry.name[:-5])}")
        with contextlib.suppress(FileNotFoundError):
            for job_dir in os.scandir(self.run_dir):
                if not job_dir.is_dir(follow_symlinks=False):
                    continue
                for f in os.scandir(job_dir.path):
                    if f.name.endswith(".qcow2") and (backing := backing_file(Path(f.path))):
                        base = backing if backing.startswith("/") else os.path.join(job_dir.path, backing)
                        add(base, f"overlay:{f.path}")
        images_prefix = str(self.images_dir.resolve()) + "/"
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if target.startswith(images_prefix):
                            add(target.removesuffix(" (deleted)"), f"pid:{pid}")
        return users

    def users_of(self, path: Path, users: dict[str, list[str]] | None = None) -> list[str]:
        table = self.users() if users is None else users
        return table.get(os.path.realpath(path), [])

    # -- fetch ----------------------------------------------------------------

    def lookup(self, img: Image) -> CachedVersion | None:
        """The hit path. Touches shared storage only for ``refresh: on-change``."""
        v = self.current(img.name)
        if v is None or v.invalidated:
            return None
        if img.refresh == "on-change" and self._stat_master(img) != v.master:
            log.info("image %s: master moved since %s; fetching the new version", img.name, v.version)
            return None
        with contextlib.suppress(OSError):
            os.utime(v.meta_path)  # last used, for LRU eviction
        return v

    def fetch(self, image: str) -> FetchResult:
        img = self.config.image(image)
        start = time.monotonic()
        self.check_root()
        v = self.lookup(img)
        if v is not None:
            return FetchResult(image, v.version, v.path, hit=True, seconds=time.monotonic() - start)
        with self.lock(image) as waited:
            # Check again: another process may have completed this work while we waited.
            v = self.lookup(img)
            if v is not None:
                log.info("image %s: %s was fetched by another process", image, v.version)
                return FetchResult(image, v.version, v.path, True, 0, time.monotonic() - start, waited)
            self.note_owner(image, "fetch (copying)")
            path, copied = self._fetch_locked(img)
            v = self.current(image)
            assert v is not None and v.path == path
            return FetchResult(image, v.version, path, False, copied, time.monotonic() - start, waited)

    def _stat_master(self, img: Image) -> MasterVersion:
        target = os.path.realpath(img.master)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            raise MasterUnavailable(
                f"master of image {img.name!r} is missing: {img.master} -> {target}; "
                f"fix the symlink on shared storage or check the mount"
            ) from None
        except OSError as exc:
            raise MasterUnavailable(
                f"master of image {img.name!r} ({img.master}) cannot be read: {exc.strerror}"
            ) from None
        return MasterVersion(target, st.st_size, st.st_mtime_ns)

    def _open_master(self, img: Image) -> tuple[int, MasterVersion]:
        """Open the master's current target once: the copy reads that one version
        even if an admin flips the symlink while it runs."""
        target = os.path.realpath(img.master)
        try:
            # O_NONBLOCK: a FIFO (or a device) posing as a master must fail here,
            # not block the prolog forever; it is cleared once we know it is a file.
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise MasterUnavailable(
                f"master of image {img.name!r} is missing: {img.master} -> {target}; "
                f"fix the symlink on shared storage or check the mount"
            ) from None
        except OSError as exc:
            raise MasterUnavailable(
                f"master of image {img.name!r} ({target}) cannot be opened: {exc.strerror}; check its permissions"
            ) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise MasterUnavailable(
                f"master of image {img.name!r} ({target}) is not a regular file; point {img.master} at an image file"
            )
        os.set_blocking(fd, True)
        return fd, MasterVersion(target, st.st_size, st.st_mtime_ns)

    def _fetch_locked(self, img: Image) -> tuple[Path, int]:
        """Copy the master into the cache. The caller holds the image's lock."""
        d = self.image_dir(img.name)
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o755)
        self._clear_partials(d)
        fd, mv = self._open_master(img)
        try:
            # A valid copy of this very version may already be here (e.g. the
            # current link was lost in a crash): adopt it instead of copying.
            for v in self.versions(img.name):
                if v.master == mv and not v.invalidated:
                    self._set_current(img.name, v.path)
                    log.info("image %s: reusing cached %s", img.name, v.version)
                    return v.path, 0
            expected = self._expected_sha256(mv)
            self._make_room(img.name, _disk_estimate(fd, mv.size))
            final = d / f"{mv.key}.{_next_generation(d, mv.key)}.{img.format}"
            tmp_fd, tmp = fsutil.adjacent_tmp(d, suffix=f".{img.format}")
            with fsutil.clean_path_on_failure(tmp):
                try:
                    copied, took = self._copy(img, fd, mv, tmp_fd, tmp)
                finally:
                    os.close(tmp_fd)
                self._verify(img, fd, mv, tmp, expected)
                os.chmod(tmp, 0o444)
                meta = {
                    "image": img.name,
                    "version": mv.label,
                    "master": str(img.master),
                    "target": mv.target,
                    "size": mv.size,
                    "mtime_ns": mv.mtime_ns,
                    "format": img.format,
                    "sha256": expected,
                    "fetched_at": time.time(),
                    "bytes_copied": copied,
                    "copy_seconds": round(took, 3),
                    "invalidated": False,
                }
                # Metadata first: a copy without metadata is never used, only collected.
                # Each file's content is fsynced before its rename; one fsync of
                # the directory then makes all three names durable together (a
                # crash before it loses them all, and the next fetch copies again).
                fsutil.atomic_write_json(Path(str(final) + META), meta, sync_dir=False)
                os.replace(tmp, final)
            previous = self.current(img.name)
            self._set_current(img.name, final, sync_dir=False)
            fsutil.fsync_dir(d)
            log.info("image %s: fetched %s (%d bytes in %.2fs)", img.name, mv.label, copied, took)
            if previous is not None and previous.path != final:
                self._remove_if_unused(previous, "superseded")
            return final, copied
        finally:
            os.close(fd)

    def _copy(self, img: Image, src: int, mv: MasterVersion, dst: int, tmp: Path) -> tuple[int, float]:
        from wnodes_cli.copier import copy_sparse

        start = time.monotonic()
        advance = self.progress(f"fetching {img.name}", mv.size) if self.progress else None
        try:
            if self.config.copy_command:
                self._external_copy(img, mv, tmp)
                copied = mv.size
            else:
                copied = copy_sparse(src, dst, mv.size, detect_zeros=False, progress=advance)
            os.fsync(dst)
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC: someone else filled the disk mid-copy
                raise NoSpace(
                    f"cache disk {self.root} filled up while copying image {img.name!r} "
                    f"({mv.size} bytes); free space or lower cache_max_bytes"
                ) from None
            raise CopyError(f"copying image {img.name!r} from {mv.target} failed: {exc.strerror or exc}") from None
        return copied, time.monotonic() - start

    def _external_copy(self, img: Image, mv: MasterVersion, tmp: Path) -> None:
        import subprocess

        assert self.config.copy_command is not None
        argv = [a.format(src=mv.target, dst=str(tmp)) for a in self.config.copy_command]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise CopyError(
                f"copy_command {argv[0]!r} cannot run: {exc.strerror}; fix copy_command in {self.config.path}"
            ) from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            if "No space left" in last:
                raise NoSpace(f"cache disk {self.root} filled up while copying image {img.name!r}: {last}")
            raise CopyError(f"copy_command for image {img.name!r} failed: {last}")

    def _expected_sha256(self, mv: MasterVersion) -> str | None:
        side = Path(mv.target + ".sha256")
        try:
            text = side.read_text(encoding="ascii", errors="replace").split()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MasterUnavailable(f"checksum file {side} cannot be read: {exc.strerror}") from None
        if not text or len(text[0]) != 64 or any(c not in "0123456789abcdef" for c in text[0].lower()):
            raise CopyError(f"checksum file {side} does not hold a sha256 hex digest; regenerate it with sha256sum")
        return text[0].lower()

    def _verify(self, img: Image, src: int, mv: MasterVersion, tmp: Path, expected: str | None) -> None:
        st = os.fstat(src)
        if (st.st_size, st.st_mtime_ns) != (mv.size, mv.mtime_ns):
            raise CopyError(
                f"master {mv.target} of image {img.name!r} changed while it was copied; "
                f"publish new versions under a new name and move the symlink instead"
            )
        got = os.stat(tmp).st_size
        if got != mv.size:
            raise CopyError(f"copy of image {img.name!r} has {got} bytes, master has {mv.size}; check copy_command")
        if expected is not None:
            # Hash what landed in the cache, not the stream: this checks the copy itself.
            import hashlib

            with open(tmp, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            if digest != expected:
                raise CopyError(
                    f"copy of image {img.name!r} has sha256 {digest[:16]}..., "
                    f"{mv.target}.sha256 says {expected[:16]}...; the master or its checksum is corrupt"
                )
        from wnodes_cli.tools import probe

        found = probe(tmp)
        if found.format != img.format:
            raise CopyError(
                f"master {mv.target} of image {img.name!r} is {found.format}, but the config says {img.format}; "
                f"fix images.{img.name}.format in {self.config.path}"
            )
        if found.backing or found.external_data:
            # Such a master would make a VM read a file the admin never listed.
            what = "a backing file" if found.backing else "an external data file"
            raise CopyError(f"master {mv.target} of image {img.name!r} has {what}; flatten it with qemu-img convert")

    def _set_current(self, image: str, path: Path, sync_dir: bool = True) -> None:
        fsutil.atomic_symlink(path.name, self.image_dir(image) / CURRENT, sync_dir)

    def _clear_partials(self, d: Path) -> None:
        """Remove what a killed copier left. Only the lock holder may call this."""
        with contextlib.suppress(FileNotFoundError):
            for n in os.listdir(d):
                if n.startswith(fsutil.TMP_PREFIX):
                    log.info("removing %s left by an interrupted run", d / n)
                    fsutil.remove_quietly(d / n)

    # -- space ----------------------------------------------------------------

    def usage(self) -> int:
        total = 0
        for image in self.cached_images():
            for v in self.versions(image):
                with contextlib.suppress(FileNotFoundError):
                    total += fsutil.allocated_bytes(os.stat(v.path))
        return total

    def _make_room(self, image: str, needed: int) -> None:
        """Evict least-recently-used unused versions until ``needed`` bytes fit."""
        vfs = os.statvfs(self.root)
        limit = self.config.cache_max.resolve(vfs.f_blocks * vfs.f_frsize)
        if limit is not None and needed > limit:
            raise NoSpace(
                f"image {image!r} needs {_human(needed)} but cache_max_bytes is {_human(limit)}; "
                f"raise cache_max_bytes in {self.config.path}"
            )

        def short() -> int:
            vfs = os.statvfs(self.root)
            free_short = needed - vfs.f_bavail * vfs.f_frsize
            limit_short = 0 if limit is None else self.usage() + needed - limit
            return max(free_short, limit_short)

        if short() <= 0:
            return
        lru = self._lru(exclude=image)
        users = self.users()
        evictable = sum(fsutil.allocated_bytes(os.stat(v.path)) for v in lru if not self.users_of(v.path, users))
        if short() > evictable:
            # Evicting would not be enough: keep the other images' copies and fail now.
            lru = []
        for v in lru:
            if short() <= 0:
                break
            with self.try_lock(v.image) as locked:
                if not locked:
                    continue
                self._remove_if_unused(v, "evicted (least recently used)")
        if (missing := short()) > 0:
            vfs = os.statvfs(self.root)
            raise NoSpace(
                f"not enough space in {self.root} for image {image!r}: needs {_human(needed)}, "
                f"{_human(vfs.f_bavail * vfs.f_frsize)} free"
                + (f", cache_max_bytes {_human(limit)}" if limit else "")
                + f", {_human(missing)} short after evicting unused versions; free disk space or raise the limit"
            )

    def _lru(self, exclude: str | None = None) -> list[CachedVersion]:
        found = []
        for image in self.cached_images():
            if image == exclude:
                continue
            for v in self.versions(image):
                try:
                    found.append((os.stat(v.meta_path).st_mtime_ns, v))
                except FileNotFoundError:
                    continue
        return [v for _, v in sorted(found, key=lambda p: (p[0], str(p[1].path)))]

    def _remove_if_unused(self, v: CachedVersion, reason: str) -> Removal:
        """Delete one version if nothing uses it. The caller holds ``v.image``'s lock,
        so no new lease can appear while we decide."""
        users = self.users_of(v.path)
        if users:
            log.info("keeping %s of image %s: in use by %s", v.version, v.image, ", ".join(users))
            return Removal(v.image, v.path, f"kept: in use ({reason})", False, tuple(users))
        cur = self.current(v.image)
        if cur is not None and cur.path == v.path:
            fsutil.remove_quietly(self.image_dir(v.image) / CURRENT)
        fsutil.remove_quietly(v.path, v.meta_path)
        log.info("removed %s of image %s: %s", v.version, v.image, reason)
        return Removal(v.image, v.path, reason, True)

    # -- invalidate, gc, list -------------------------------------------------

    def invalidate(self, image: str) -> list[Removal]:
        """Make the next fetch copy the master afresh. Versions in use stay,
        marked invalidated, until gc finds them unused."""
        self.config.image(image)
        out = []
        with self.lock(image, "invalidate"):
            fsutil.remove_quietly(self.image_dir(image) / CURRENT)
            users = self.users()
            for v in self.versions(image):
                who = self.users_of(v.path, users)
                if who:
                    if not v.invalidated:
                        fsutil.atomic_write_json(v.meta_path, {**v.meta, "invalidated": True})
                    out.append(Removal(image, v.path, "invalidated; kept while in use", False, tuple(who)))
                else:
                    fsutil.remove_quietly(v.path, v.meta_path)
                    out.append(Removal(image, v.path, "invalidated", True))
        return out

    def gc(self, dry_run: bool = False) -> list[Removal]:
        """Remove what no job needs: superseded, invalidated and orphaned files,
        images no longer configured, then LRU versions over cache_max_bytes."""
        out: list[Removal] = []
        for image in self.cached_images():
            d = self.image_dir(image)
            with self.lock(image, "gc"):
                if not dry_run:
                    self._clear_partials(d)
                users = self.users()
                cur = self.current(image)
                valid = {v.path for v in self.versions(image)}
                for v in self.versions(image):
                    if image not in self.config.images:
                        reason = "image no longer configured"
                    elif v.invalidated:
                        reason = "invalidated"
                    elif cur is None or v.path != cur.path:
                        reason = "superseded by a newer version"
                    else:
                        continue
                    who = self.users_of(v.path, users)
                    if who:
                        out.append(Removal(image, v.path, f"kept: in use ({reason})", False, tuple(who)))
                    elif dry_run:
                        out.append(Removal(image, v.path, reason, False))
                    else:
                        out.append(self._remove_if_unused(v, reason))
                out.extend(self._orphans(image, valid, users, dry_run))
        out.extend(self._enforce_limit(dry_run))
        return out

    def _orphans(self, image: str, valid: set[Path], users: dict[str, list[str]], dry_run: bool) -> list[Removal]:
        """Files a crash left half-registered: data without metadata or the reverse."""
        d = self.image_dir(image)
        out = []
        with contextlib.suppress(FileNotFoundError):
            for n in sorted(os.listdir(d)):
                p = d / n
                if n == CURRENT:
                    if not os.path.exists(p) and not dry_run:
                        fsutil.remove_quietly(p)
                    continue
                if n.startswith(fsutil.TMP_PREFIX):
                    continue
                data = Path(str(p).removesuffix(META))
                if data in valid or self.users_of(data, users):
                    continue
                if not dry_run:
                    fsutil.remove_quietly(p)
                out.append(Removal(image, p, "orphaned by an interrupted run", not dry_run))
        return out

    def _enforce_limit(self, dry_run: bool) -> list[Removal]:
        vfs = os.statvfs(self.root)
        limit = self.config.cache_max.resolve(vfs.f_blocks * vfs.f_frsize)
        if limit is None:
            return []
        out = []
        over = self.usage() - limit
        for v in self._lru():
            if over <= 0:
                break
            size = fsutil.allocated_bytes(os.stat(v.path))
            if dry_run:
                if not self.users_of(v.path):
                    out.append(Removal(v.image, v.path, "over cache_max_bytes", False))
                    over -= size
                continue
            with self.try_lock(v.image) as locked:
                if locked:
                    r = self._remove_if_unused(v, "evicted: over cache_max_bytes")
                    out.append(r)
                    if r.removed:
                        over -= size
        return out

    def listing(self) -> list[dict[str, object]]:
        users = self.users()
        rows: list[dict[str, object]] = []
        for image in self.cached_images():
            cur = self.current(image)
            for v in self.versions(image):
                st = os.stat(v.path)
                who = self.users_of(v.path, users)
                rows.append(
                    {
                        "image": image,
                        "version": v.version,
                        "path": str(v.path),
                        "size": st.st_size,
                        "disk_bytes": fsutil.allocated_bytes(st),
                        "current": cur is not None and cur.path == v.path,
                        "invalidated": v.invalidated,
                        "in_use": bool(who),
                        "users": who,
                        "last_used": os.stat(v.meta_path).st_mtime,
                    }
                )
        return rows


def _next_generation(d: Path, key: str) -> int:
    """A fresh name for each copy of a version, so that a copy made after an
    invalidate never replaces the file an older overlay is backed by."""
    gens = [0]
    for n in os.listdir(d):
        parts = n.split(".")
        if parts[0] == key and len(parts) > 2 and parts[1].isdigit():
            gens.append(int(parts[1]))
    return max(gens) + 1


def _disk_estimate(fd: int, size: int) -> int:
    """What the copy will occupy: a sparse master stays sparse in the cache."""
    blocks = os.fstat(fd).st_blocks * 512
    return min(size, blocks) if blocks > 0 else size


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
