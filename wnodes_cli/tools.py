"""The only module that runs qemu-img (and, later, virsh).

Keeping every external call here gives one place to set timeouts, turn a
tool's failure into a ``ToolError`` naming the command, and fake a tool in a
fault-injection test. ``sh`` is imported lazily: it costs ~90 ms, and a cache
hit never needs it.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import NamedTuple

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


class Probe(NamedTuple):
    format: str  # qcow2, raw, or the name of another format found
    backing: str | None  # qcow2 backing file name, if any
    external_data: bool  # qcow2 v3 "external data file" feature


#: Magic numbers of formats a raw image must not carry (qemu's probes, block/*.c).
#: A "raw" master that is really one of these is a config mistake.
_MAGICS = (
    (0, b"QED\x00", "qed"),
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc"),
    (0, b"LUKS\xba\xbe", "luks"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"WithouFreSpacExt", "parallels"),
    (0, b"Bochs Virtual HD Image", "bochs"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
)


def probe(path: Path) -> Probe:
    """Identify an image's format from its header, in-process.

    A fetch checks every new copy. ``qemu-img info`` would cost a process and
    importing ``sh`` (~100 ms, most of a small copy); the two formats wnodes
    accepts are told apart by their headers, which is what qemu's probe reads.
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head[:4] == QCOW2_MAGIC:
        version = struct.unpack(">I", head[4:8])[0]
        incompatible = struct.unpack(">Q", head[72:80])[0] if version >= 3 and len(head) >= 80 else 0
        return Probe("qcow2", backing_file(path), bool(incompatible & 0x4))
    for offset, magic, name in _MAGICS:
        if head[offset : offset + len(magic)] == magic:
            return Probe(name, None, False)
    return Probe("raw", None, False)


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
