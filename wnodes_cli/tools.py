"""The only module that runs qemu-img and virsh.

Keeping every external call here gives one place to set timeouts, turn a
tool's failure into a ``ToolError`` naming the command, and fake a tool in a
fault-injection test.

It uses ``subprocess``, not the ``sh`` library: on the warm prolog (bench
``warm_prolog``) importing ``sh`` cost 33 ms (it pulls in asyncio), and its
``_timeout`` another ~100 ms per call, against a floor of ~430 ms.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import NamedTuple

from wnodes_cli.errors import ToolError

QCOW2_MAGIC = b"QFI\xfb"


def _run(
    tool: str, *args: str, timeout: float = 120, stdin: str | None = None, missing_ok: tuple[str, ...] = ()
) -> str | None:
    """Run a tool; its output, or None when it failed with one of ``missing_ok`` in its stderr."""
    exe = shutil.which(tool)
    if exe is None:
        pkg = {"qemu-img": "qemu-utils", "virsh": "libvirt-clients"}.get(tool, tool)
        raise ToolError(f"{tool} is not installed or not on PATH; install it (apt-get install {pkg})")
    try:
        proc = subprocess.run(
            [exe, *args],
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=_ENV,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolError(f"{tool} {' '.join(_short(args))} did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        err = proc.stderr.strip()
        if any(m in err for m in missing_ok):
            return None
        lines = [line for line in err.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit {proc.returncode}"
        raise ToolError(f"{tool} {' '.join(_short(args))} failed: {detail}")
    return proc.stdout


#: The tools run with a fixed environment: an LRMS prolog may have no PATH at
#: all, and a job's environment must never reach them.
_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def _short(args: tuple[str, ...]) -> list[str]:
    """The words of a command worth putting in an error line (no XML, no long paths)."""
    return [a for a in args if not a.startswith("-") and "\n" not in a][:3]


# -- qemu-img ---------------------------------------------------------------------


def create_overlay(base: Path, base_format: str, overlay: Path) -> None:
    """A qcow2 overlay backed by ``base``. Its cost does not grow with the base's size:
    qemu-img reads only the base's header for its virtual size."""
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", base_format, str(overlay))


# -- virsh ------------------------------------------------------------------------

_NO_DOMAIN = ("failed to get domain", "Domain not found", "domain is not running", "not found")


def virsh_create(uri: str, xml: str, timeout: float) -> None:
    """Start a transient domain from XML (given on stdin: no file to clean up)."""
    _run("virsh", "-q", "-c", uri, "create", "/dev/stdin", stdin=xml, timeout=timeout)


def virsh_destroy(uri: str, name: str) -> bool:
    """Stop a domain at once; False when there was none to stop."""
    return _run("virsh", "-q", "-c", uri, "destroy", name, missing_ok=_NO_DOMAIN) is not None


def virsh_undefine(uri: str, name: str) -> bool:
    """Remove a persistent definition (transient domains have none); False when there was none."""
    return _run("virsh", "-q", "-c", uri, "undefine", name, missing_ok=(*_NO_DOMAIN, "transient")) is not None


def virsh_state(uri: str, name: str) -> str | None:
    """The domain's state ("running", "paused", "shut off", ...), or None when it does not exist."""
    out = _run("virsh", "-q", "-c", uri, "domstate", name, missing_ok=_NO_DOMAIN)
    return None if out is None else out.strip()


def agent(uri: str, name: str, command: str, arguments: dict[str, object] | None = None, timeout: int = 10) -> object:
    """One QEMU guest agent command through libvirt; None when the agent does not answer (yet)."""
    import json

    payload = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
    out = _run(
        "virsh",
        "-q",
        "-c",
        uri,
        "qemu-agent-command",
        name,
        payload,
        "--timeout",
        str(timeout),
        timeout=timeout + 10,
        missing_ok=("not responding", "not connected", "not configured", "Guest agent is not", *_NO_DOMAIN),
    )
    if out is None:
        return None
    return json.loads(out).get("return")


def virsh_domains(uri: str) -> dict[str, str]:
    """Every domain libvirt knows, name -> state, in one call."""
    out = _run("virsh", "-q", "-c", uri, "list", "--all") or ""
    found = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            found[parts[1]] = parts[2].strip()
    return found


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
