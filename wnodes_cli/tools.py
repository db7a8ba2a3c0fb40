"""The only module that runs qemu-img (and, later, virsh).

Keeping every external call here gives one place to set timeouts, turn a
tool's failure into a ``ToolError`` naming the command, and fake a tool in a
fault-injection test. ``sh`` is imported lazily: it costs ~90 ms, and a cache
hit never needs it.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

from wnodes_cli.errors import ToolError

QCOW2_MAGIC = b"QFI\xfb"


def _run(tool: str, *args: str, timeout: float = 120) -> str:
    import sh

    exe = shutil.which(tool)
    if exe is None:
        raise ToolError(f"{tool} is not installed or not on PATH; install it (apt-get install qemu-utils)")
    try:
        out = sh.Command(exe)(*args, _timeout=timeout, _env={"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except sh.ErrorReturnCode as exc:
        err = exc.stderr.decode(errors="replace").strip().splitlines()
        detail = err[-1] if err else f"exit {exc.exit_code}"
        raise ToolError(f"{tool} {' '.join(args[:2])} failed: {detail}") from None
    except sh.TimeoutException:
        raise ToolError(f"{tool} {' '.join(args[:2])} did not finish within {timeout:.0f}s") from None
    return str(out)


def image_info(path: Path) -> dict[str, Any]:
    """``qemu-img info`` as JSON. The format is probed: that is the point of asking."""
    info: dict[str, Any] = json.loads(_run("qemu-img", "info", "--output=json", "--force-share", str(path)))
    return info


def backing_file(path: Path) -> str | None:
    """The backing file name recorded in a qcow2 header, without running qemu-img.

    gc scans every overlay to decide what is in use; parsing the 32-byte header
    is exact (it is what qemu reads) and keeps gc free of a process per overlay.
    """
    try:
        with open(path, "rb") as fh:
            header = fh.read(32)
            if len(header) < 32 or header[:4] != QCOW2_MAGIC:
                return None
            offset, length = struct.unpack(">QI", header[8:20])
            if offset == 0 or length == 0 or length > 4096:
                return None
            fh.seek(offset)
            return fh.read(length).decode("utf-8", errors="surrogateescape")
    except OSError:
        return None
