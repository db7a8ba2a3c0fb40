"""Full disk mid-copy, and a master that moves while it is copied."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Site, VMSite, needs_root, sha256

pytestmark = [pytest.mark.slow, pytest.mark.stress]
MiB = 1 << 20


def write_random(path: Path, mb: int, seed: int) -> Path:
    block = bytes((i * 31 + seed) % 253 + 1 for i in range(MiB))
    with open(path, "wb") as fh:
        for i in range(mb):
            fh.write(block[i % 61 :] + block[: i % 61])
    return path


def wait_for_part(d: Path, proc: subprocess.Popen[str], timeout: float = 30) -> Path | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(d.glob(".part-*")) if d.exists() else []
        if parts and parts[0].stat().st_size > 0:
            return parts[0]
        time.sleep(0.0005)
    return None


@needs_root
@pytest.mark.libvirt
def test_disk_fills_up_mid_copy(vm_site: VMSite, scale: int, reliability: list[dict[str, object]]) -> None:
    """Another writer fills the cache's file system while a copy runs (a real ENOSPC)."""
    vm_site.cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640m,mode=755", "tmpfs", str(vm_site.cache)], check=True)
    try:
        vm_site.guest_image("sl7", "sl7", hold=120, memory_mb=128)
        big = write_random(vm_site.shared / "big-v1.raw", 384, seed=7)
        vm_site.point("big", big)
        vm_site.images["big"] = {"master": str(vm_site.shared / "big.raw"), "format": "raw"}
        vm_site.write_config(default_image="sl7")
        job = vm_site.job("running")
        vm_site.ok("prolog", "--job", job)
        vm_site.wait_console(job, "WNODES-GUEST-TICK 1")
        sl7_copy = next((vm_site.cache / "images" / "sl7").glob("*.qcow2"))
        sl7_sum = sha256(sl7_copy)
        lease = (vm_site.cache / "leases" / f"{job}.json").read_text()
        filled = 0
        for attempt in range(3 * scale):
            filler = vm_site.cache / "filler"
            p = vm_site.popen("fetch", "big")
            part = wait_for_part(vm_site.cache / "images" / "big", p)
            if part is None:
                p.communicate()
                vm_site.ok("invalidate", "big")
                continue
            # The pre-copy check passed; now someone else takes the rest of the disk.
            subprocess.run(["fallocate", "-l", "400M", str(filler)], check=False)
            _, err = p.communicate(timeout=60)
            filler.unlink(missing_ok=True)
            lines = [line for line in err.splitlines() if line.strip()]
            assert p.returncode == 73, err
            assert len(lines) == 1 and "filled up while copying image 'big'" in lines[0]
            assert os.listdir(vm_site.cache / "images" / "big") == [], "nothing left behind"
            filled += 1
        assert filled >= 1, "the copy never ran long enough to fill the disk under it"
        # The other image's copy and the running job are untouched.
        assert sha256(sl7_copy) == sl7_sum
        assert (vm_site.cache / "leases" / f"{job}.json").read_text() == lease
        assert vm_site.state(job) == "running"
        ticks = vm_site.console(job).count("WNODES-GUEST-TICK")
        vm_site.wait_console(job, f"WNODES-GUEST-TICK {ticks + 1}")
        # With the space back, the fetch works.
        assert sha256(Path(vm_site.ok("fetch", "big").out.strip())) == sha256(big)
        vm_site.ok("epilog", "--job", job)
        reliability.append(
            {
                "case": "full disk",
                "count": filled,
                "checked": "exit 73 with one line; no temp file or copy left; the other image's copy (sha256), the "
                "running job's lease and VM untouched; the next fetch succeeded",
                "lost": 0,
            }
        )
    finally:
        subprocess.run(
            ["virsh", "-q", "-c", vm_site.uri, "destroy", f"wnodes-{vm_site.job('running')}"], capture_output=True
        )
        subprocess.run(["umount", "-l", str(vm_site.cache)], check=False)


def test_master_moves_while_it_is_copied(site: Site, scale: int, reliability: list[dict[str, object]]) -> None:
    v1 = write_random(site.shared / "sl7-v1.raw", 256, seed=1)
    v2 = write_random(site.shared / "sl7-v2.raw", 256, seed=2)
    s1, s2 = sha256(v1), sha256(v2)
    site.point("sl7", v1)
    site.images["sl7"] = {"master": str(site.shared / "sl7.raw"), "format": "raw"}
    site.write_config()
    flips = 0
    for _ in range(5 * scale):
        site.point("sl7", v1)
        site.ok("invalidate", "sl7")
        p = site.popen("fetch", "sl7")
        if wait_for_part(site.cache / "images" / "sl7", p) is not None:
            site.point("sl7", v2)  # the admin publishes v2 while v1 is being copied
            flips += 1
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        got = sha256(Path(out.strip()))
        assert got in (s1, s2), "the copy is one whole version, never a mix"
        assert got == s1, "the copy is of the version that was current when it started"
    assert flips >= 1

    # An admin who rewrites the target in place (instead of publishing) is caught.
    rewrites = 0
    for _ in range(3 * scale):
        site.point("sl7", v1)
        site.ok("invalidate", "sl7")
        p = site.popen("fetch", "sl7")
        if wait_for_part(site.cache / "images" / "sl7", p) is None:
            p.communicate()
            continue
        with open(v1, "r+b") as fh:
            fh.seek(0)
            fh.write(b"\xff" * 4096)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 74 and "changed while it was copied" in err, err
        assert os.listdir(site.cache / "images" / "sl7") == []
        rewrites += 1
    reliability.append(
        {
            "case": "moving master",
            "count": flips + rewrites,
            "checked": f"{flips} symlink flips mid-copy: the copy matched the sha256 of the version it started from; "
            f"{rewrites} in-place rewrites mid-copy: refused (exit 74), nothing kept",
            "lost": 0,
        }
    )
