"""A job's facts, read from the LRMS environment.

Each LRMS hands its prolog the job's identity differently. An adapter turns
that into one ``JobFacts``; everything downstream (selection, leases) sees only
``JobFacts``. Slurm is the first adapter; others plug in through ``ADAPTERS``.

Every value here is untrusted job data: selection only compares it with the
admin's patterns, and nothing here is ever used as a path or a command word.
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from wnodes_cli.errors import UsageError

T = TypeVar("T")


class JobFacts(NamedTuple):
    job_id: str | None = None
    queue: str | None = None
    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    group: str | None = None
    account: str | None = None
    host: str | None = None
    features: tuple[str, ...] = ()
    env: Mapping[str, str] = MappingProxyType({})

    def with_names(self) -> JobFacts:
        """Fill user/group names from uid/gid (and back) through NSS when missing."""
        facts = self
        if facts.user is None and facts.uid is not None:
            facts = facts._replace(user=_lookup(lambda: pwd.getpwuid(facts.uid or 0).pw_name))
        if facts.uid is None and facts.user:
            facts = facts._replace(uid=_lookup(lambda: pwd.getpwnam(facts.user or "").pw_uid))
        if facts.group is None and facts.gid is not None:
            facts = facts._replace(group=_lookup(lambda: grp.getgrgid(facts.gid or 0).gr_name))
        if facts.gid is None and facts.group:
            facts = facts._replace(gid=_lookup(lambda: grp.getgrnam(facts.group or "").gr_gid))
        return facts


def _lookup(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except (KeyError, OverflowError):
        return None


def _int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _split(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    # Slurm constraints look like "gpu&fast" or "gpu,fast" or "[a|b]": take the names.
    for sep in "&|,[]()*":
        value = value.replace(sep, " ")
    return tuple(v for v in value.split() if v)


def slurm(env: Mapping[str, str]) -> JobFacts:
    """Slurm Prolog/Epilog environment (slurm.conf(5), "Prolog and Epilog Scripts")."""
    return JobFacts(
        job_id=env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"),
        queue=env.get("SLURM_JOB_PARTITION"),
        uid=_int(env.get("SLURM_JOB_UID")),
        gid=_int(env.get("SLURM_JOB_GID")),
        user=env.get("SLURM_JOB_USER"),
        account=env.get("SLURM_JOB_ACCOUNT"),
        host=env.get("SLURMD_NODENAME"),
        features=_split(env.get("SLURM_JOB_CONSTRAINTS")),
        env=env,
    )


def plain(env: Mapping[str, str]) -> JobFacts:
    """No LRMS: only flags and the environment rules see."""
    return JobFacts(env=env)


ADAPTERS: dict[str, Callable[[Mapping[str, str]], JobFacts]] = {
    "slurm": slurm,
    "none": plain,
}


def detect(env: Mapping[str, str]) -> str:
    if any(k.startswith("SLURM_") for k in env):
        return "slurm"
    return "none"


def from_environment(env: Mapping[str, str], lrms: str | None = None) -> JobFacts:
    name = lrms or detect(env)
    try:
        adapter = ADAPTERS[name]
    except KeyError:
        raise UsageError(f"unknown LRMS {name!r}; use one of: {', '.join(sorted(ADAPTERS))}") from None
    return adapter(env)
