"""Job ids and leases: the record that a job's VM depends on a cached copy.

A lease is ``leases/<job>.json`` in the cache. It is written (atomically,
fsynced) under the image's lock *before* the overlay exists, and removed
last by ``stop``, so a cached copy is protected for the whole life of the
job's VM, including a crash half way through either.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from wnodes_cli import fsutil
from wnodes_cli.errors import JobError, show

if TYPE_CHECKING:
    from wnodes_cli.jobinfo import JobFacts

#: Job ids become a file name, a directory name and part of a domain name.
#: Slurm (123, 123_4), PBS (123.server), HTCondor (12.0) and LSF (123_4) fit.
JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DOMAIN_PREFIX = "wnodes-"


def check_job_id(job: str | None) -> str:
    if not job:
        raise JobError("no job id: pass --job ID or run under an LRMS that sets one (SLURM_JOB_ID, ...)")
    if not JOB_RE.match(job):
        raise JobError(
            f"job id {show(job)} is not usable: wanted 1-64 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit"
        )
    return job


def sudo_caller(env: Mapping[str, str]) -> int:
    """The uid of the user who ran wnodes through sudo (--for-caller)."""
    raw = env.get("SUDO_UID", "")
    if os.geteuid() != 0 or not raw.isdigit():
        raise JobError("--for-caller is for a sudo rule: run it through sudo as the job's user")
    return int(raw)


def for_caller(facts: JobFacts, env: Mapping[str, str]) -> JobFacts:
    """Facts of a job run through sudo by its own user (an HTCondor job wrapper).

    The sudoers rule fixes the command line, so the only input left is the
    LRMS's (the job ad). The job must be the caller's: its owner's uid is
    $SUDO_UID. Its id gets the caller's uid as a prefix, so that a user who
    edits their own job ad cannot claim another user's job id.
    """
    caller = sudo_caller(env)
    facts = facts.with_names()
    if facts.uid != caller:
        raise JobError(
            f"job {show(facts.job_id)} belongs to {show(facts.user)} (uid {facts.uid}), not to the caller "
            f"(uid {caller}); a user may only drive their own jobs"
        )
    return facts._replace(job_id=f"u{caller}-{facts.job_id}" if facts.job_id else None)


def domain_name(job: str) -> str:
    return DOMAIN_PREFIX + job


class Lease(NamedTuple):
    job: str
    image: str
    version: str
    path: str  # the cached copy the overlay is backed by
    overlay: str
    format: str  # the cached copy's format
    uid: int | None
    user: str | None
    created: float

    def as_json(self) -> dict[str, Any]:
        return self._asdict()


class Leases:
    def __init__(self, cache_dir: Path) -> None:
        self.dir = cache_dir / "leases"
        self.run_dir = cache_dir / "run"
        self.consoles_dir = cache_dir / "consoles"

    def file(self, job: str) -> Path:
        return self.dir / f"{job}.json"

    def job_dir(self, job: str) -> Path:
        return self.run_dir / job

    def kept_console(self, job: str) -> Path:
        """Where a job's console log is kept after stop (for the admin's post-mortem)."""
        return self.consoles_dir / f"{job}.log"

    def write(self, lease: Lease) -> None:
        fsutil.atomic_write_json(self.file(lease.job), lease.as_json())

    def get(self, job: str) -> Lease | None:
        data = fsutil.read_json(self.file(job))
        if not isinstance(data, dict):
            return None
        strings = ("job", "image", "version", "path", "overlay", "format")
        if not all(isinstance(data.get(k), str) for k in strings):
            return None  # not a lease we wrote: ignore it rather than trust it
        uid, user, created = data.get("uid"), data.get("user"), data.get("created")
        return Lease(
            job=str(data["job"]),
            image=str(data["image"]),
            version=str(data["version"]),
            path=str(data["path"]),
            overlay=str(data["overlay"]),
            format=str(data["format"]),
            uid=uid if isinstance(uid, int) else None,
            user=user if isinstance(user, str) else None,
            created=float(created) if isinstance(created, (int, float)) else 0.0,
        )

    def remove(self, job: str) -> None:
        fsutil.remove_quietly(self.file(job))

    def all(self) -> list[Lease]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if n.endswith(".json") and not n.startswith("."):
                lease = self.get(n[: -len(".json")])
                if lease is not None:
                    out.append(lease)
        return out

    @staticmethod
    def age(lease: Lease) -> float:
        return time.time() - float(lease.created or 0)
