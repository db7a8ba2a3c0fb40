"""A job's VM: snapshot, start, wait, stop, and the prolog/epilog that chain them.

Every step is a function over ``Node`` (the config, the cache and the
leases); the CLI commands and the prolog call these, never each other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from wnodes_cli import domain, fsutil, tools
from wnodes_cli.cache import FetchResult, ImageCache
from wnodes_cli.config import Config
from wnodes_cli.errors import CopyError, JobError, NotFound, WnodesError
from wnodes_cli.jobinfo import JobFacts
from wnodes_cli.jobs import Lease, Leases, check_job_id, domain_name
from wnodes_cli.selection import Selection, select

log = logging.getLogger("wnodes")

OVERLAY = "disk.qcow2"
CONSOLE = "console.log"
SHARE = "share"  # shared into the guest with virtiofs (tag wnodes-job): exec's output


class Snapshot(NamedTuple):
    lease: Lease
    fetch: FetchResult

    def as_json(self) -> dict[str, Any]:
        return {
            "job": self.lease.job,
            "image": self.lease.image,
            "version": self.lease.version,
            "overlay": self.lease.overlay,
        }


class Started(NamedTuple):
    job: str
    domain: str
    domain_type: str
    console: str

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


class Ended(NamedTuple):
    job: str
    ended: bool  # False: still running when the wait ran out
    seconds: float
    console_tail: list[str]

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


class Stopped(NamedTuple):
    job: str
    domain_destroyed: bool
    overlay_removed: bool
    lease_removed: bool

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


class PrologResult(NamedTuple):
    selection: Selection
    snapshot: Snapshot
    started: Started
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            **self.snapshot.as_json(),
            "rule": self.selection.rule,
            "hit": self.snapshot.fetch.hit,
            "waited_seconds": round(self.snapshot.fetch.waited_seconds, 6),
            "domain": self.started.domain,
            "domain_type": self.started.domain_type,
            "console": self.started.console,
            "seconds": round(self.seconds, 6),
        }


class Node:
    def __init__(self, config: Config, timeout: float | None = None, progress: Any = None) -> None:
        self.config = config
        self.cache = ImageCache(config, timeout=timeout, progress=progress)
        self.leases = Leases(config.cache_dir)
        self.uri = config.libvirt.uri

    # -- snapshot ---------------------------------------------------------------

    def snapshot(self, image: str, job: str, facts: JobFacts | None = None) -> Snapshot:
        job = check_job_id(job)
        img = self.config.image(image)
        if (old := self.leases.get(job)) is not None:
            raise JobError(
                f"job {job} already has a snapshot on this node (image {old.image}, {old.overlay}); "
                f"run 'wnodes stop --job {job}' first"
            )
        for _attempt in range(3):
            fetched = self.cache.fetch(image)
            with self.cache.lock(image):
                # Under the lock no eviction, invalidate or gc can run on this
                # image: re-check that the copy we fetched is still the one to use.
                current = self.cache.current(image)
                if current is None or current.path != fetched.path or current.invalidated:
                    log.info("image %s changed between fetch and snapshot; fetching again", image)
                    continue
                job_dir = self.leases.job_dir(job)
                os.makedirs(job_dir, mode=0o755, exist_ok=True)
                lease = Lease(
                    job=job,
                    image=image,
                    version=current.version,
                    path=str(current.path),
                    overlay=str(job_dir / OVERLAY),
                    format=img.format,
                    uid=facts.uid if facts else None,
                    user=facts.user if facts else None,
                    created=time.time(),
                )
                # The lease goes first: from here on the copy is protected.
                self.leases.write(lease)
            break
        else:
            raise CopyError(f"image {image!r} kept changing while job {job} was being set up; retry the job")
        try:
            tools.create_overlay(Path(lease.path), img.format, Path(lease.overlay))
        except BaseException:
            self._remove_files(job)
            raise
        log.info("job %s: overlay %s on %s", job, lease.overlay, lease.version)
        return Snapshot(lease, fetched)

    # -- start / wait ---------------------------------------------------------------

    def start(self, job: str) -> Started:
        job = check_job_id(job)
        lease = self.leases.get(job)
        if lease is None:
            raise NotFound(f"job {job} has no snapshot on this node; run 'wnodes snapshot IMAGE --job {job}' first")
        img = self.config.image(lease.image)
        job_dir = self.leases.job_dir(job)
        console = job_dir / CONSOLE
        share = job_dir / SHARE
        if img.virtiofs:
            os.makedirs(share, mode=0o755, exist_ok=True)
        dtype = domain.resolve_type(self.config)
        xml = domain.build(self.config, img, lease, console, dtype, share if img.virtiofs else None)
        with contextlib.suppress(OSError):
            (job_dir / "domain.xml").write_text(xml)  # for the admin; the domain is transient
        tools.virsh_create(self.uri, xml, timeout=self.config.libvirt.start_timeout)
        log.info("job %s: domain %s started (%s)", job, domain_name(job), dtype)
        return Started(job, domain_name(job), dtype, str(console))

    def wait(self, job: str, timeout: float) -> Ended:
        """Wait for the job's domain to end (the guest shut down or was destroyed)."""
        job = check_job_id(job)
        start = time.monotonic()
        ended = False
        while time.monotonic() - start < timeout:
            state = tools.virsh_state(self.uri, domain_name(job))
            if state is None or state == "shut off":
                ended = True
                break
            time.sleep(0.25)
        return Ended(job, ended, time.monotonic() - start, self.console_tail(job))

    def console_tail(self, job: str, lines: int = 5) -> list[str]:
        try:
            with open(self.leases.job_dir(job) / CONSOLE, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        return [line.rstrip("\r") for line in text.splitlines() if line.strip()][-lines:]

    # -- stop --------------------------------------------------------------------------

    def stop(self, job: str) -> Stopped:
        """Destroy the domain, delete the overlay, release the lease. Safe to repeat.

        If libvirt cannot be asked, nothing is removed: the domain may still be
        running on the overlay, and its lease must keep protecting the copy.
        """
        job = check_job_id(job)
        name = domain_name(job)
        destroyed = tools.virsh_destroy(self.uri, name)
        tools.virsh_undefine(self.uri, name)
        had_files = self.leases.job_dir(job).exists()
        had_lease = self.leases.get(job) is not None
        self._remove_files(job)
        log.info("job %s: stopped (domain destroyed: %s)", job, destroyed)
        return Stopped(job, destroyed, had_files, had_lease)

    def _remove_files(self, job: str) -> None:
        job_dir = self.leases.job_dir(job)
        if job_dir.is_symlink():
            job_dir.unlink()
        else:
            self._keep_console(job)
            shutil.rmtree(job_dir, ignore_errors=True)
        self.leases.remove(job)  # last: while anything of the job remains, it protects the copy

    def _keep_console(self, job: str) -> None:
        """The console is what an admin reads when a job's VM misbehaved: keep it
        (``cache gc`` removes it after ``console_keep_days``)."""
        console = self.leases.job_dir(job) / CONSOLE
        if not console.is_file() or console.is_symlink():
            return
        with contextlib.suppress(OSError):
            os.makedirs(self.leases.consoles_dir, mode=0o755, exist_ok=True)
            os.replace(console, self.leases.kept_console(job))

    def forget_consoles(self) -> list[str]:
        """Remove kept console logs older than ``console_keep_days``."""
        gone = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.leases.consoles_dir):
                if entry.name.endswith(".log") and time.time() - entry.stat().st_mtime > self.config.console_keep:
                    fsutil.remove_quietly(Path(entry.path))
                    gone.append(entry.name)
        return gone

    # -- prolog / epilog ------------------------------------------------------------

    def prolog(self, facts: JobFacts) -> PrologResult:
        """select -> fetch -> snapshot -> start; any failure undoes the earlier steps."""
        started_at = time.monotonic()
        job = check_job_id(facts.job_id)
        chosen = select(self.config, facts)
        if self.leases.get(job) is not None:
            state = tools.virsh_state(self.uri, domain_name(job))
            if state is not None and state != "shut off":
                raise JobError(f"job {job} already has a running VM on this node ({domain_name(job)})")
            log.warning("job %s: removing what an earlier, interrupted run of it left", job)
            self.stop(job)
        snap = self.snapshot(chosen.image, job, facts.with_names())
        try:
            started = self.start(job)
        except BaseException as exc:
            self._rollback(job, exc)
            raise
        return PrologResult(chosen, snap, started, time.monotonic() - started_at)

    def _rollback(self, job: str, cause: BaseException) -> None:
        try:
            self.stop(job)
        except WnodesError as exc:
            log.error("job %s: rollback after %s failed too: %s", job, type(cause).__name__, exc)

    def epilog(self, facts: JobFacts) -> Stopped:
        return self.stop(check_job_id(facts.job_id))

    # -- ps, reaping --------------------------------------------------------------

    def ps(self) -> list[dict[str, Any]]:
        try:
            domains: dict[str, str] | None = tools.virsh_domains(self.uri)
        except WnodesError as exc:
            log.warning("cannot list domains: %s", exc)
            domains = None
        rows = []
        seen = set()
        for lease in self.leases.all():
            name = domain_name(lease.job)
            seen.add(name)
            state = "unknown" if domains is None else domains.get(name, "gone")
            try:
                overlay_bytes = os.stat(lease.overlay).st_blocks * 512
            except OSError:
                overlay_bytes = 0
            rows.append(
                {
                    "job": lease.job,
                    "domain": name,
                    "state": state,
                    "image": lease.image,
                    "version": lease.version,
                    "overlay": lease.overlay,
                    "overlay_bytes": overlay_bytes,
                    "uid": lease.uid,
                    "user": lease.user,
                    "age_seconds": round(Leases.age(lease), 1),
                }
            )
        for name, state in sorted((domains or {}).items()):
            if name.startswith("wnodes-") and name not in seen:
                rows.append(
                    {
                        "job": name.removeprefix("wnodes-"),
                        "domain": name,
                        "state": f"{state} (no lease)",
                        "image": None,
                        "version": None,
                        "overlay": None,
                        "overlay_bytes": 0,
                        "uid": None,
                        "user": None,
                        "age_seconds": None,
                    }
                )
        return rows

    def reap(self) -> list[str]:
        """Stop the jobs whose lease outlived their domain by the grace period
        (a node reboot, an epilog that never ran)."""
        stale = [lease for lease in self.leases.all() if Leases.age(lease) > self.config.lease_grace]
        if not stale:
            return []  # no need to ask libvirt (gc also runs where libvirt is down)
        try:
            domains = tools.virsh_domains(self.uri)
        except WnodesError as exc:
            log.warning("not reaping leases: cannot list domains: %s", exc)
            return []
        reaped = []
        for lease in stale:
            state = domains.get(domain_name(lease.job))
            if state is None or state == "shut off":
                log.warning(
                    "job %s: domain gone for over %.0fs; releasing its lease", lease.job, self.config.lease_grace
                )
                self.stop(lease.job)
                reaped.append(lease.job)
        return reaped
