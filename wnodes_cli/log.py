"""Logging: syslog when not on a terminal (a prolog's stderr is otherwise lost),
stderr when on one. ``WNODES_LOG=stderr|syslog`` forces either."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("wnodes")


class _LazySyslog(logging.Handler):
    """Opens the syslog socket on the first record, so a quiet run (a cache
    hit) does not pay for importing logging.handlers and connecting."""

    def __init__(self, facility: str) -> None:
        super().__init__()
        self.facility = facility
        self.inner: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.inner is None:
            self.inner = _open_syslog(self.facility)
            self.inner.setFormatter(logging.Formatter("wnodes[%(process)d]: %(message)s"))
        self.inner.emit(record)


def _open_syslog(facility: str) -> logging.Handler:
    from logging.handlers import SysLogHandler

    if os.path.exists("/dev/log"):
        try:
            return SysLogHandler(address="/dev/log", facility=facility)
        except OSError:
            pass
    # No syslog daemon (a container, a test box): stderr is better than nothing.
    return logging.StreamHandler(sys.stderr)


def to_syslog() -> bool:
    forced = os.environ.get("WNODES_LOG", "").lower()
    if forced in ("stderr", "syslog"):
        return forced == "syslog"
    # Where no syslog daemon listens (containers, CI), stderr is all there is.
    return not sys.stderr.isatty() and os.path.exists("/dev/log")


def setup(verbosity: int = 0, facility: str = "daemon") -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
    handler: logging.Handler
    if to_syslog():
        # Off a terminal, keep the record of what the prolog did: INFO and up.
        handler = _LazySyslog(facility)
        level = logging.DEBUG if verbosity >= 2 else logging.INFO
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("wnodes: %(message)s"))
        level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def set_facility(facility: str) -> None:
    """The facility comes from the config, which loads after logging starts."""
    for h in log.handlers:
        if isinstance(h, _LazySyslog) and h.inner is None:
            h.facility = facility
