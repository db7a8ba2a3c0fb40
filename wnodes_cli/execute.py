"""wnodes exec: run the job's payload inside its VM, as if it ran on the host.

The LRMS launches an ordinary host process (this one) with its stdout and
stderr already pointed at the job's output files. It:

1. waits, with a bound, for the job's domain and its QEMU guest agent
   (``guest-ping``); if they never come up it exits VMDOWN (76) so that the
   glue can requeue the job instead of failing it;
2. runs the payload in the guest with ``guest-exec``, as the job's user
   (from the lease) in the job's working directory, with the given environment;
3. streams the payload's stdout and stderr back as they come: the guest writes
   them into the job's virtiofs share, and this process tails them. Without
   virtiofs it falls back to ``capture-output``: output arrives at the end,
   capped by qemu-ga at 16 MiB per stream;
4. forwards SIGTERM and SIGINT (scancel, walltime) by killing the payload in
   the guest, then waits for it;
5. exits with the payload's exit code, or 128+n when a signal ended it.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from wnodes_cli import tools
from wnodes_cli.errors import JobError, NotFound, UsageError, VMDown, show
from wnodes_cli.jobs import Lease, check_job_id, domain_name
from wnodes_cli.vm import SHARE, Node

POLL = 0.05  # how often the output files are read
STATUS_FIRST = 0.01  # the first wait before asking the agent whether the payload ended
STATUS_EVERY = 0.2  # and the longest, after backing off
KILL_GRACE = 10.0  # after forwarding SIGTERM, how long before SIGKILL
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def read_callers_file(path: str, caller: int | None, what: str) -> bytes:
    """A host file given by the caller. Under a sudo rule, only a file of the
    caller's own, not a symlink: root must not carry another user's file into
    the guest for them."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW if caller is not None else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if caller is not None and os.fstat(fh.fileno()).st_uid != caller:
            raise JobError(f"{what} {path} is not the caller's own file")
        return fh.read(64 << 20)


def read_env_file(path: str, caller: int | None) -> list[str]:
    """NAME=VALUE lines, blank lines and # comments skipped."""
    lines = read_callers_file(path, caller, "--env-file").decode(errors="replace").splitlines()
    env = []
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, _ = line.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise UsageError(f"--env-file {path}: {show(line)} is not NAME=VALUE")
        env.append(line)
    return env


class GuestRun:
    def __init__(self, node: Node, lease: Lease, timeout: float) -> None:
        self.node = node
        self.lease = lease
        self.uri = node.uri
        self.domain = domain_name(lease.job)
        self.timeout = timeout
        self.share = node.leases.job_dir(lease.job) / SHARE
        self.signalled: int | None = None

    # -- waiting for the VM --------------------------------------------------

    def wait_for_agent(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if tools.agent(self.uri, self.domain, "guest-ping", timeout=2) is not None:
                return
            state = tools.virsh_state(self.uri, self.domain)
            if state is None or state in ("shut off", "crashed"):
                raise VMDown(
                    f"the VM of job {self.lease.job} ({self.domain}) is not running ({state or 'gone'}); "
                    f"requeue the job"
                )
            if time.monotonic() > deadline:
                raise VMDown(
                    f"the guest agent of job {self.lease.job} ({self.domain}) did not answer within "
                    f"{self.timeout:g}s; check the image has qemu-guest-agent (guest_agent: true)"
                )
            time.sleep(0.2)

    # -- running -----------------------------------------------------------------

    def script(self, argv: list[str], workdir: str, tag: str | None) -> str:
        """The guest-side shell: make the user exist, cd, drop to the user, run the payload."""
        uid = self.lease.uid if self.lease.uid is not None else 0
        user = self.lease.user if self.lease.user and USER_RE.match(self.lease.user) else f"u{uid}"
        gid = _gid(uid)
        payload = "exec " + " ".join(shlex.quote(a) for a in argv)
        q = shlex.quote
        lines = [
            f"grep -q '^{user}:' /etc/passwd || echo '{user}:x:{uid}:{gid}::/tmp:/bin/sh' >> /etc/passwd",
            f"mkdir -p {q(workdir)} && chown {uid}:{gid} {q(workdir)}",
            f"cd {q(workdir)} || exit 126",
        ]
        run = f"su -p -s /bin/sh {user} -c {q(payload)}" if uid != 0 else f"/bin/sh -c {q(payload)}"
        if tag is not None:
            lines.append(f"echo $$ > /wnodes/{tag}.pid")
            lines.append(f"exec {run} > /wnodes/{tag}.out 2> /wnodes/{tag}.err")
        else:
            lines.append(f"exec {run}")
        return "\n".join(lines)

    def shared(self) -> bool:
        """The guest mounted the job's virtiofs share (it leaves .mounted in it when it does)."""
        return (self.share / ".mounted").is_file()

    def status(self, pid: int) -> dict[str, Any]:
        st = tools.agent(self.uri, self.domain, "guest-exec-status", {"pid": pid})
        if st is None:
            raise VMDown(f"the VM of job {self.lease.job} went away while its payload ran; requeue the job")
        assert isinstance(st, dict)
        return st

    def carry(self, script: bytes, tag: str, streaming: bool) -> str:
        """Put the payload's script into the guest; its path there."""
        if streaming:
            path = self.share / f"{tag}.script"
            path.write_bytes(script)
            path.chmod(0o755)
            return f"/wnodes/{tag}.script"
        guest = f"/tmp/{tag}.script"
        handle = tools.agent(self.uri, self.domain, "guest-file-open", {"path": guest, "mode": "w"})
        if not isinstance(handle, int):
            raise VMDown(f"the guest agent of job {self.lease.job} stopped answering; requeue the job")
        try:
            for i in range(0, len(script), 1 << 20):
                chunk = base64.b64encode(script[i : i + (1 << 20)]).decode()
                tools.agent(self.uri, self.domain, "guest-file-write", {"handle": handle, "buf-b64": chunk})
        finally:
            tools.agent(self.uri, self.domain, "guest-file-close", {"handle": handle})
        return guest

    def run(self, argv: list[str], workdir: str, env: list[str], script: bytes | None = None) -> int:
        self.wait_for_agent()
        streaming = self.shared()
        tag = f"x{os.getpid()}-{int(time.time() * 1000)}"
        if script is not None:
            argv = ["/bin/sh", self.carry(script, tag, streaming), *argv[1:]]
        if not streaming:
            tag_for_output: str | None = None
        else:
            tag_for_output = tag
        started = tools.agent(
            self.uri,
            self.domain,
            "guest-exec",
            {
                "path": "/bin/sh",
                "arg": ["-c", self.script(argv, workdir, tag)],
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/tmp", *env],
                "capture-output": not streaming,
            },
        )
        if not isinstance(started, dict):
            raise VMDown(f"the guest agent of job {self.lease.job} stopped answering; requeue the job")
        pid = int(started["pid"])
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            st = self._follow(pid, tag_for_output)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if not streaming:
            for key, stream in (("out-data", sys.stdout), ("err-data", sys.stderr)):
                if st.get(key):
                    stream.buffer.write(base64.b64decode(st[key]))
                    stream.flush()
            if st.get("out-truncated") or st.get("err-truncated"):
                sys.stderr.write("wnodes: the guest agent cut the payload's output at 16 MiB (no virtiofs share)\n")
        if "signal" in st:
            return 128 + int(st["signal"])
        return int(st.get("exitcode", 0))

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signalled = signum

    def _follow(self, pid: int, tag: str | None) -> dict[str, Any]:
        files = {}
        if tag is not None:
            files = {self.share / f"{tag}.out": sys.stdout.buffer, self.share / f"{tag}.err": sys.stderr.buffer}
        offsets = dict.fromkeys(files, 0)
        next_status = time.monotonic()
        interval = STATUS_FIRST  # short payloads end within a round trip or two: ask often, then back off
        forwarded_at: float | None = None
        st: dict[str, Any] = {}
        try:
            while True:
                self._drain(files, offsets)
                if self.signalled is not None and forwarded_at is None:
                    self._kill(pid, "TERM" if self.signalled != signal.SIGINT else "INT")
                    forwarded_at = time.monotonic()
                if forwarded_at is not None and time.monotonic() - forwarded_at > KILL_GRACE:
                    self._kill(pid, "KILL")
                    forwarded_at = float("inf")
                now = time.monotonic()
                if now >= next_status:
                    st = self.status(pid)
                    if st.get("exited"):
                        self._drain(files, offsets)
                        return st
                    interval = min(interval * 2, STATUS_EVERY)
                    next_status = time.monotonic() + interval
                time.sleep(max(0.0, min(POLL, next_status - time.monotonic())))
        finally:
            for path in files:
                path.unlink(missing_ok=True)
            if tag is not None:
                for suffix in (".pid", ".script"):
                    (self.share / f"{tag}{suffix}").unlink(missing_ok=True)

    @staticmethod
    def _drain(files: dict[Path, Any], offsets: dict[Path, int]) -> None:
        for path, stream in files.items():
            try:
                with open(path, "rb") as fh:
                    fh.seek(offsets[path])
                    data = fh.read()
            except FileNotFoundError:
                continue
            if data:
                offsets[path] += len(data)
                stream.write(data)
                stream.flush()

    def _kill(self, pid: int, sig: str) -> None:
        # The payload is the process guest-exec started (sh and su exec into it);
        # its children get the signal too.
        tools.agent(
            self.uri,
            self.domain,
            "guest-exec",
            {"path": "/bin/sh", "arg": ["-c", f"pkill -{sig} -P {pid}; kill -{sig} {pid}"]},
        )


def _gid(uid: int) -> int:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def exec_in_vm(
    node: Node,
    job: str,
    argv: list[str],
    workdir: str | None,
    env: list[str],
    timeout: float,
    caller: int | None,
    script: bool = False,
) -> int:
    job = check_job_id(job)
    if not argv:
        raise UsageError("nothing to run: wnodes exec --job ID -- COMMAND [ARGS...]")
    lease = node.leases.get(job)
    if lease is None:
        raise NotFound(f"job {job} has no VM on this node (no lease); was its prolog run here?")
    if caller is not None and lease.uid != caller:
        raise JobError(
            f"job {job} belongs to uid {lease.uid}, not to the caller (uid {caller}); "
            f"a user may only drive their own jobs"
        )
    body = read_callers_file(argv[0], caller, "--script") if script else None
    return GuestRun(node, lease, timeout).run(argv, workdir or "/tmp", env, body)
