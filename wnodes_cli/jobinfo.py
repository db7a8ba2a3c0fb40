"""A job's facts, as each LRMS hands them to its prolog or epilog.

Each LRMS passes the job's identity differently: Slurm and LSF in the
environment, PBS/Torque as positional arguments, HTCondor in a job ClassAd
file. An adapter turns that into one ``JobFacts``; everything downstream
(selection, leases) sees only ``JobFacts``. docs/lrms.md lists each source.

Every value here is untrusted job data: selection only compares it with the
admin's patterns, and nothing here is ever used as a path or a command word
(the job id is checked against ``jobs.JOB_RE`` before it names anything).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Callable, Mapping, Sequence
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
    vo: str | None = None  # Grid: the VO the Computing Element says the job belongs to
    fqan: tuple[str, ...] = ()  # Grid: VOMS FQANs, primary first
    env: Mapping[str, str] = MappingProxyType({})

    def with_names(self) -> JobFacts:
        """Fill user/group names from uid/gid (and back) through NSS when missing."""
        facts = self
        if facts.user is None and facts.uid is not None:
            facts = facts._replace(user=_lookup(lambda: pwd.getpwuid(facts.uid or 0).pw_name))
        if facts.uid is None and facts.user:
            facts = facts._replace(uid=_lookup(lambda: pwd.getpwnam(facts.user or "").pw_uid))
        if facts.gid is None and facts.uid is not None:
            facts = facts._replace(gid=_lookup(lambda: pwd.getpwuid(facts.uid or 0).pw_gid))
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


def _comment_tokens(comment: str | None, key: str) -> list[str]:
    """The values of ``key=value`` tokens anywhere in a job comment."""
    if not comment:
        return []
    return re.findall(rf"(?:^|[\s;,]){re.escape(key)}=([^\s;,]+)", comment)


def slurm(env: Mapping[str, str], args: Sequence[str]) -> JobFacts:
    """Slurm: the Prolog/Epilog environment set by slurmd.

    Source: slurm.conf(5) "PROLOG AND EPILOG SCRIPTS" and
    https://slurm.schedmd.com/prolog_epilog.html. Slurm gives the Prolog no
    node features, so hostgroups come from SLURMD_NODENAME; nor the job's
    environment, so what a job or its CE wants to say travels in the comment:
    ``vo=<vo> fqan=<fqan>...`` (written by the CE) and ``wnodes.image=<name>``
    (the job asking for an image; it becomes $WNODES_IMAGE for the rules).
    """
    comment = env.get("SLURM_JOB_COMMENT")
    vo = _comment_tokens(comment, "vo")
    asked = _comment_tokens(comment, "wnodes.image")
    if asked and "WNODES_IMAGE" not in env:
        env = {**env, "WNODES_IMAGE": asked[0]}
    return JobFacts(
        job_id=env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"),
        queue=env.get("SLURM_JOB_PARTITION"),
        uid=_int(env.get("SLURM_JOB_UID")),
        gid=_int(env.get("SLURM_JOB_GID")),
        user=env.get("SLURM_JOB_USER"),
        group=env.get("SLURM_JOB_GROUP"),
        account=env.get("SLURM_JOB_ACCOUNT"),
        host=env.get("SLURMD_NODENAME"),
        features=_split(env.get("SLURM_JOB_CONSTRAINTS")),
        vo=vo[0] if vo else None,
        fqan=tuple(_comment_tokens(comment, "fqan")),
        env=env,
    )


def pbs(env: Mapping[str, str], args: Sequence[str]) -> JobFacts:
    """PBS/Torque: the prologue's positional arguments.

    Source: TORQUE Administrator Guide, "Prologue and epilogue scripts":
    prologue argv[1] job id, [2] job execution user name, [3] job execution
    group name, [4] job name, [5] requested resource limits, [6] job execution
    queue, [7] job account. The epilogue has the same first three (and the
    queue at [8]); the epilog needs only the id. PBS Pro passes id, user, group.
    """
    if not args:
        raise UsageError('PBS/Torque passes the job to its prologue as arguments; pass them on: wnodes prolog "$@"')

    def arg(n: int) -> str | None:
        return args[n - 1] if len(args) >= n and args[n - 1] else None

    return JobFacts(
        job_id=_pbs_job_id(arg(1)),
        user=arg(2),
        group=arg(3),
        queue=arg(6),
        account=arg(7),
        env=env,
    )


def _pbs_job_id(raw: str | None) -> str | None:
    # "1234.server.example.org" and array jobs "1234[5].server": the id is unique per server.
    if raw is None:
        return None
    return raw.replace("[", "_").replace("]", "")


def lsf(env: Mapping[str, str], args: Sequence[str]) -> JobFacts:
    """LSF: the queue-level PRE_EXEC/POST_EXEC environment (the job's own, plus LSB_*).

    Source: IBM Spectrum LSF 10.1, "Environment variables set for job
    execution" and "Pre- and post-execution processing behavior".
    """
    job = env.get("LSB_JOBID")
    index = env.get("LSB_JOBINDEX")
    if job and index and index != "0":
        job = f"{job}_{index}"  # an element of a job array
    hosts = (env.get("LSB_HOSTS") or "").split()
    return JobFacts(
        job_id=job,
        queue=env.get("LSB_QUEUE"),
        user=env.get("LSFUSER") or env.get("USER"),
        account=env.get("LSB_PROJECT_NAME"),
        host=hosts[0] if hosts else None,
        env=env,
    )


def htcondor(env: Mapping[str, str], args: Sequence[str]) -> JobFacts:
    """HTCondor: the job ClassAd that the starter writes for a job wrapper.

    Source: HTCondor manual, USER_JOB_WRAPPER and "Job ClassAd attributes":
    the file named by _CONDOR_JOB_AD (or the first argument). Queue is the
    accounting group (HTCondor has no queues); VO and FQAN come from the
    proxy attributes the schedd sets from the job's VOMS proxy.
    """
    path = args[0] if args else env.get("_CONDOR_JOB_AD")
    if not path:
        raise UsageError("no HTCondor job ad: run under a job wrapper (it sets $_CONDOR_JOB_AD) or pass its path")
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            ad = parse_classad(fh.read())
    except OSError as exc:
        raise UsageError(f"cannot read the HTCondor job ad {path}: {exc.strerror}") from None
    cluster, proc = ad.get("ClusterId"), ad.get("ProcId")
    # x509UserProxyFQAN is "<DN>,<FQAN>,<FQAN>...": a DN's first component has '=', a VO name has not.
    fqans = tuple(f for f in (ad.get("x509UserProxyFQAN") or "").split(",") if re.match(r"^/[^/=]+(/|$)", f))
    first = ad.get("x509UserProxyFirstFQAN")
    if first and first not in fqans:
        fqans = (first, *fqans)
    return JobFacts(
        job_id=f"{cluster}.{proc}" if cluster and proc else None,
        user=ad.get("Owner"),
        queue=ad.get("AcctGroup"),
        account=ad.get("AccountingGroup"),
        features=_split(ad.get("WNodesFeatures")),
        vo=ad.get("x509UserProxyVOName"),
        fqan=fqans,
        env=env,
    )


def parse_classad(text: str) -> dict[str, str]:
    """``Name = value`` lines of an old-syntax ClassAd; strings unquoted, the rest as written."""
    ad: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name.isidentifier():
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        ad[name] = value
    return ad


def plain(env: Mapping[str, str], args: Sequence[str]) -> JobFacts:
    """No LRMS: only flags and the environment rules see."""
    return JobFacts(env=env)


ADAPTERS: dict[str, Callable[[Mapping[str, str], Sequence[str]], JobFacts]] = {
    "slurm": slurm,
    "pbs": pbs,
    "lsf": lsf,
    "htcondor": htcondor,
    "none": plain,
}


def detect(env: Mapping[str, str], args: Sequence[str]) -> str:
    if "SLURM_JOB_ID" in env or "SLURM_JOBID" in env:
        return "slurm"
    if "LSB_JOBID" in env:
        return "lsf"
    if "_CONDOR_JOB_AD" in env:
        return "htcondor"
    if args:
        return "pbs"  # the only one that passes the job as arguments
    return "none"


def from_environment(env: Mapping[str, str], lrms: str | None = None, args: Sequence[str] = ()) -> JobFacts:
    name = lrms or detect(env, args)
    try:
        adapter = ADAPTERS[name]
    except KeyError:
        raise UsageError(f"unknown LRMS {name!r}; use one of: {', '.join(sorted(ADAPTERS))}") from None
    facts = adapter(env, args)
    if facts.host is None:
        facts = facts._replace(host=os.uname().nodename)
    return facts
