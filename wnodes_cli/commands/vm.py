"""wnodes snapshot / start / stop / prolog / epilog / ps: a job's VM."""

from __future__ import annotations

import sys

from wnodes_cli.config import Config
from wnodes_cli.jobinfo import JobFacts
from wnodes_cli.output import emit_json, human, progress_bar, table
from wnodes_cli.vm import Ended, Node, PrologResult, Snapshot, Started, Stopped


def _node(config: Config, timeout: float | None = None) -> Node:
    return Node(config, timeout=timeout, progress=progress_bar if sys.stderr.isatty() else None)


def snapshot(config: Config, image: str, job: str, facts: JobFacts, timeout: float | None, as_json: bool) -> Snapshot:
    snap = _node(config, timeout).snapshot(image, job, facts.with_names())
    if as_json:
        emit_json(snap.as_json())
    else:
        sys.stdout.write(f"{snap.lease.overlay}\n")
    return snap


def start(config: Config, job: str, wait: bool, wait_timeout: float, as_json: bool) -> Started | Ended:
    node = _node(config)
    started = node.start(job)
    if not wait:
        if as_json:
            emit_json(started.as_json())
        else:
            sys.stdout.write(f"{started.domain} running ({started.domain_type}); console log {started.console}\n")
        return started
    ended = node.wait(job, wait_timeout)
    if as_json:
        emit_json({**started.as_json(), **ended.as_json()})
    else:
        _show_end(started.domain, ended)
    return ended


def stop(config: Config, job: str, as_json: bool) -> Stopped:
    stopped = _node(config).stop(job)
    if as_json:
        emit_json(stopped.as_json())
    else:
        done = [
            what
            for what, flag in (
                ("domain destroyed", stopped.domain_destroyed),
                ("overlay removed", stopped.overlay_removed),
                ("lease released", stopped.lease_removed),
            )
            if flag
        ]
        sys.stdout.write(f"job {job}: {', '.join(done) or 'nothing left to clean'}\n")
    return stopped


def prolog(config: Config, facts: JobFacts, timeout: float | None, wait: bool, as_json: bool) -> PrologResult:
    node = _node(config, timeout)
    result = node.prolog(facts)
    ended = node.wait(result.started.job, 600) if wait else None
    if as_json:
        emit_json({**result.as_json(), **(ended.as_json() if ended else {})})
        return result
    j = result.as_json()
    sys.stdout.write(
        f"job {j['job']}: {j['domain']} running image {j['image']} ({j['version']}, "
        f"{'cached' if j['hit'] else 'fetched'}) in {j['seconds']:.2f}s\n"
    )
    if ended is not None:
        _show_end(result.started.domain, ended)
    return result


def _show_end(domain: str, ended: Ended) -> None:
    how = f"ended after {ended.seconds:.1f}s" if ended.ended else f"still running after {ended.seconds:.0f}s"
    sys.stdout.write(f"{domain} {how}; last console lines:\n")
    for line in ended.console_tail:
        sys.stdout.write(f"  | {line}\n")


def epilog(config: Config, facts: JobFacts, as_json: bool) -> Stopped:
    from wnodes_cli.jobs import check_job_id

    return stop(config, check_job_id(facts.job_id), as_json)


def exec_(
    config: Config,
    job: str | None,
    argv: list[str],
    workdir: str | None,
    env_file: str | None,
    wait_timeout: float,
    for_caller: bool,
    script: bool = False,
) -> int:
    import os

    from wnodes_cli.errors import UsageError
    from wnodes_cli.execute import exec_in_vm, read_env_file
    from wnodes_cli.jobinfo import from_environment
    from wnodes_cli.jobs import sudo_caller

    caller = sudo_caller(os.environ) if for_caller else None
    if job is None:
        if caller is not None:
            raise UsageError("--for-caller needs --job ID")
        job = from_environment(dict(os.environ)).job_id
        if job is None:
            raise UsageError("no job: pass --job ID (or run inside the LRMS job)")
    env = read_env_file(env_file, caller) if env_file else []
    return exec_in_vm(Node(config), job, argv, workdir, env, wait_timeout, caller, script)


def ps(config: Config, as_json: bool) -> None:
    rows = _node(config).ps()
    if as_json:
        emit_json(rows)
        return
    table(
        [
            [
                r["job"],
                r["state"],
                r["image"] or "-",
                r["version"] or "-",
                human(float(r["overlay_bytes"])),
                r["user"] or (r["uid"] if r["uid"] is not None else "-"),
            ]
            for r in rows
        ],
        ["job", "state", "image", "version", "overlay", "user"],
    )
