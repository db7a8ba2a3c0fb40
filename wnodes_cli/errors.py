"""Typed errors and the one table that maps them to exit codes.

Every failure the tool can report is one of these classes. The CLI catches
``WnodesError`` in exactly one place (``cli.main``) and exits with its
``exit_code``; docs/exit-codes.md is the same table in prose. The codes follow
sysexits(3) so that an LRMS wrapper can tell the classes apart:

* usage / config  -> fix the command line or the site config
* job-level       -> fail this job, leave the node alone
* temporary       -> requeue the job, the node is fine
* node-level      -> drain the node, an admin must look
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 64  # EX_USAGE: bad command line
    JOB = 65  # EX_DATAERR: the job asked for something it may not have
    NOINPUT = 66  # EX_NOINPUT: the thing named does not exist (no such job)
    UNAVAILABLE = 69  # EX_UNAVAILABLE: a master image cannot be read (node-level)
    SOFTWARE = 70  # EX_SOFTWARE: a bug in wnodes (node-level)
    TOOL = 71  # EX_OSERR: qemu-img / virsh / copy command failed (node-level)
    NOSPACE = 73  # EX_CANTCREAT: not enough space in the cache (node-level)
    IO = 74  # EX_IOERR: copy failed, corrupt or inconsistent data (node-level)
    TEMPFAIL = 75  # EX_TEMPFAIL: timed out waiting; try again (requeue)
    VMDOWN = 76  # EX_PROTOCOL: wnodes exec: the job's VM or its guest agent never came up (requeue)
    NOPERM = 77  # EX_NOPERM: an unsafe cache directory (symlink, writable by others) (node-level)
    CONFIG = 78  # EX_CONFIG: the site config is invalid or unsafe


#: How an LRMS should react to each code. Used by ``wnodes exit-codes`` and the docs.
EXIT_CLASS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.USAGE: "usage",
    ExitCode.CONFIG: "config",
    ExitCode.JOB: "job",
    ExitCode.NOINPUT: "job",
    ExitCode.TEMPFAIL: "temporary",
    ExitCode.VMDOWN: "temporary",
    ExitCode.UNAVAILABLE: "node",
    ExitCode.SOFTWARE: "node",
    ExitCode.TOOL: "node",
    ExitCode.NOSPACE: "node",
    ExitCode.IO: "node",
    ExitCode.NOPERM: "node",
}


class WnodesError(Exception):
    """Base class: a one-line message that names the thing and the fix."""

    exit_code: ExitCode = ExitCode.SOFTWARE

    def __init__(self, message: str) -> None:
        # One line, always: a prolog's stderr ends up in a single syslog record.
        super().__init__(" ".join(message.split("\n")))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(WnodesError):
    exit_code = ExitCode.USAGE


class ConfigError(WnodesError):
    exit_code = ExitCode.CONFIG

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        #: Every problem found, one line each; the CLI prints them all.
        self.problems = problems or [self.message]

    @classmethod
    def from_problems(cls, problems: list[str]) -> ConfigError:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return cls(first + more, [" ".join(p.split("\n")) for p in problems])


class JobError(WnodesError):
    """The job's request is bad or forbidden: fail the job, not the node."""

    exit_code = ExitCode.JOB


class NotFound(WnodesError):
    exit_code = ExitCode.NOINPUT


class LockTimeout(WnodesError):
    exit_code = ExitCode.TEMPFAIL


class MasterUnavailable(WnodesError):
    exit_code = ExitCode.UNAVAILABLE


class ToolError(WnodesError):
    exit_code = ExitCode.TOOL


class NoSpace(WnodesError):
    exit_code = ExitCode.NOSPACE


class CopyError(WnodesError):
    exit_code = ExitCode.IO


class RolloutFailed(WnodesError):
    """Some nodes of a fleet operation failed or were unreachable."""

    exit_code = ExitCode.UNAVAILABLE


class VMDown(WnodesError):
    """The job's VM, or its guest agent, did not come up (or went away)."""

    exit_code = ExitCode.VMDOWN


class UnsafePath(WnodesError):
    exit_code = ExitCode.NOPERM


def show(value: object, limit: int = 64) -> str:
    """Render an untrusted value for an error line: quoted, escaped, bounded.

    Values from the job's environment can hold newlines, NUL bytes or terminal
    escapes; repr() neutralises all of them and the cut keeps the line short.
    """
    text = repr(str(value))
    if len(text) > limit:
        text = text[: limit - 4] + "...'"
    return text
