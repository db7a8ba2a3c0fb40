"""Shared fixtures: a site with a "shared storage" folder, real masters made by
qemu-img, a config file, and a runner that calls wnodes as a real process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--scale",
        type=int,
        default=1,
        help="Multiply the sizes of the stress tests (tests/stress/); CI runs 1.",
    )


@pytest.fixture(scope="session")
def scale(request: pytest.FixtureRequest) -> int:
    return max(1, int(request.config.getoption("--scale")))


@pytest.fixture(scope="session")
def reliability() -> Iterator[list[dict[str, Any]]]:
    """Figures of the stress tests; written as JSON to $WNODES_RELIABILITY_REPORT (docs/reliability.md)."""
    records: list[dict[str, Any]] = []
    yield records
    out = os.environ.get("WNODES_RELIABILITY_REPORT")
    if out:
        Path(out).write_text(json.dumps(records, indent=1))


def sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def tree_state(root: Path) -> dict[str, str]:
    """Every file below root with its checksum (or link target): a before/after snapshot."""
    state: dict[str, str] = {}
    if not root.exists():
        return state
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                state[rel] = sha256(p)
            else:
                state[rel] = "dir"
    return state


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@dataclass
class Site:
    root: Path
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def config_path(self) -> Path:
        return self.root / "etc" / "wnodes.yaml"

    def make_master(
        self,
        name: str,
        version: str,
        size_mb: int = 8,
        fmt: str = "qcow2",
        data: bytes | None = None,
        sha: bool = False,
    ) -> Path:
        """Create a real image file on shared storage and point the master symlink at it."""
        target = self.shared / f"{name}-{version}.{fmt}"
        if fmt == "qcow2":
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), f"{size_mb}M"], check=True)
            if data:
                # Give each version distinct content so checksums tell them apart.
                raw = self.root / "tmp.raw"
                raw.write_bytes(data + bytes(1024 * 1024 - len(data) % (1024 * 1024)))
                subprocess.run(
                    ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(target)], check=True
                )
                raw.unlink()
        else:
            with open(target, "wb") as fh:
                fh.truncate(size_mb << 20)
                if data:
                    fh.write(data)
        if sha:
            Path(str(target) + ".sha256").write_text(f"{sha256(target)}  {target.name}\n")
        self.point(name, target)
        self.images.setdefault(name, {"master": str(self.shared / f"{name}.{fmt}"), "format": fmt})
        return target

    def point(self, name: str, target: Path) -> None:
        link = self.shared / f"{name}.{target.suffix.lstrip('.')}"
        tmp = self.shared / f".{name}.tmp"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(target.name)
        os.replace(tmp, link)

    def write_config(self, **extra: Any) -> Path:
        self.extra.update(extra)
        cfg: dict[str, Any] = {"cache_dir": str(self.cache), "images": self.images, **self.extra}
        self.config_path.parent.mkdir(exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.config_path.chmod(0o644)
        return self.config_path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "WNODES"))}
        env.update({"WNODES_CONFIG": str(self.config_path), "WNODES_LOG": "stderr"}, **extra)
        return env

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "wnodes_cli", *args]

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.cmd(*args), env=env or self.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        p = subprocess.run(self.cmd(*args), env=env or self.env(), capture_output=True, text=True, timeout=timeout)
        return Result(p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Result:
        r = self.run(*args, env=env)
        assert r.code == 0, f"wnodes {' '.join(args)} exited {r.code}: {r.err}"
        return r


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    os.chmod(tmp_path, 0o755)
    s = Site(tmp_path)
    s.shared.mkdir()
    (tmp_path / "etc").mkdir(mode=0o755)
    yield s


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (tmpfs mounts, chown)")


# -- real libvirt and a real guest ----------------------------------------------------


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """libvirtd and virtlogd, started by the repo's own script (no systemd here)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / "start-libvirt")], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"libvirt could not be started by scripts/start-libvirt: {r.stderr.strip()[-400:]}")
    return "qemu:///system"


@pytest.fixture(scope="session")
def guest() -> Iterator[Path]:
    """Kernel, initramfs and root disks (identities sl7, el8, el9, sl7v2) from scripts/build-guest.

    Under /var/tmp and world-readable: QEMU runs as libvirt-qemu and must reach them.
    """
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="wnodes-guest-", dir="/var/tmp"))
    d.chmod(0o755)
    subprocess.run(["bash", str(REPO / "scripts" / "build-guest"), str(d), "sl7", "el8", "el9", "sl7v2"], check=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class VMSite(Site):
    guest: Path
    uri: str
    prefix: str

    def guest_image(
        self, name: str, identity: str, version: str = "v1", hold: int | None = None, agent: bool = False, **extra: Any
    ) -> Path:
        """Publish the guest disk `identity` as version `version` of image `name`."""
        import shutil

        target = self.shared / f"{name}-{version}.qcow2"
        shutil.copyfile(self.guest / f"{identity}.qcow2", target)
        target.chmod(0o644)
        self.point(name, target)
        cmdline = "console=ttyS0 panic=-1 loglevel=3" + (f" wnodes.hold={hold}" if hold else "")
        if agent:  # stays up, with qemu-guest-agent and the job's virtiofs share, for wnodes exec
            cmdline += " wnodes.agent=1"
            extra = {"guest_agent": True, "virtiofs": True, **extra}
        self.images[name] = {
            "master": str(self.shared / f"{name}.qcow2"),
            "format": "qcow2",
            "memory_mb": 192,
            "kernel": str(self.guest / "vmlinuz"),
            "initrd": str(self.guest / "initrd.img"),
            "cmdline": cmdline,
            **extra,
        }
        return target

    def job(self, n: object) -> str:
        return f"{self.prefix}-{n}"

    def console(self, job: str) -> str:
        p = self.cache / "run" / job / "console.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def state(self, job: str) -> str | None:
        r = subprocess.run(["virsh", "-q", "-c", self.uri, "domstate", f"wnodes-{job}"], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    def wait_gone(self, job: str, timeout: float = 90) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(job) in (None, "shut off"):
                return
            time.sleep(0.25)
        raise AssertionError(f"domain wnodes-{job} still running after {timeout}s; console: {self.console(job)[-500:]}")

    def wait_console(self, job: str, text: str, timeout: float = 90) -> str:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.console(job)
            if text in out:
                return out
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared on the console of {job}: {self.console(job)[-500:]}")


@pytest.fixture
def vm_site(libvirt_uri: str, guest: Path) -> Iterator[VMSite]:
    import secrets
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="wnodes-vm-", dir="/var/tmp"))
    root.chmod(0o755)
    s = VMSite(root)
    s.guest, s.uri, s.prefix = guest, libvirt_uri, "t" + secrets.token_hex(3)
    s.shared.mkdir()
    (root / "etc").mkdir(mode=0o755)
    s.extra["libvirt"] = {"uri": libvirt_uri, "domain_type": "qemu"}
    yield s
    # Whatever a failed test left running goes, then the files.
    out = subprocess.run(["virsh", "-q", "-c", libvirt_uri, "list", "--name"], capture_output=True, text=True).stdout
    for name in out.split():
        if name.startswith(f"wnodes-{s.prefix}-"):
            subprocess.run(["virsh", "-q", "-c", libvirt_uri, "destroy", name], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
