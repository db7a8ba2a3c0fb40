"""Load: 64 concurrent prolog -> epilog cycles over 4 images, on real qemu-img and libvirt.

Each cycle starts a real TCG domain from its own overlay and destroys it in
the epilog right after. Afterwards nothing of any job may be left, and each
image must have been copied exactly once.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import VMSite

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.stress]

IMAGES = {"q0": "sl7", "q1": "el8", "q2": "el9", "q3": "sl7v2"}


def leftovers(site: VMSite) -> dict[str, list[str]]:
    cache = site.cache
    domains = subprocess.run(
        ["virsh", "-q", "-c", site.uri, "list", "--all", "--name"], capture_output=True, text=True
    ).stdout.split()
    return {
        "leases": sorted(p.name for p in (cache / "leases").glob("*")),
        "overlays": sorted(str(p) for p in (cache / "run").glob("*/*")),
        "domains": [d for d in domains if d.startswith(f"wnodes-{site.prefix}-")],
        "temp files": sorted(str(p) for p in cache.rglob(".part-*")),
        "lock holders": sorted(p.name for p in (cache / "locks").glob("*.owner")),
    }


def test_concurrent_prolog_epilog_cycles(vm_site: VMSite, scale: int, reliability: list[dict[str, object]]) -> None:
    for image in IMAGES.values():
        vm_site.guest_image(image, image, memory_mb=128)
    vm_site.write_config(rules=[{"match": {"queue": q}, "image": i} for q, i in IMAGES.items()])
    wnodes = " ".join(vm_site.cmd())
    cycles = 64 * scale
    start = time.monotonic()
    procs = []
    for n in range(cycles):
        job, queue = vm_site.job(n), f"q{n % 4}"
        script = f"{wnodes} prolog --job {job} --queue {queue} --json && {wnodes} epilog --job {job} --json"
        procs.append(
            (
                job,
                queue,
                subprocess.Popen(
                    ["sh", "-c", script], env=vm_site.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ),
            )
        )
    results = []
    for job, queue, p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"cycle {job} failed: {err}"
        prolog, epilog = (json.loads(line) for line in out.splitlines())
        assert prolog["image"] == IMAGES[queue] and epilog["lease_removed"] is True
        results.append(prolog)
    took = time.monotonic() - start

    for image in IMAGES.values():
        cold = [r for r in results if r["image"] == image and not r["hit"]]
        assert len(cold) == 1, f"image {image} was copied {len(cold)} times"
        copies = list((vm_site.cache / "images" / image).glob("*.qcow2"))
        assert [c.name.split(".")[1] for c in copies] == ["1"], "one copy, never re-made"
    left = leftovers(vm_site)
    assert left == {k: [] for k in left}, left
    # every lock is free: a non-blocking acquire succeeds at once
    from filelock import FileLock

    for lock in (vm_site.cache / "locks").glob("*.lock"):
        FileLock(lock, preserve_lock_file=True).acquire(timeout=0).lock.release()
    reliability.append(
        {
            "case": "load",
            "count": cycles,
            "seconds": round(took, 1),
            "checked": "every cycle succeeded; each of 4 images copied once; no lease, overlay, domain, temp file or "
            "lock holder left",
            "lost": 0,
        }
    )


def test_waiters_for_a_cold_image_all_run(vm_site: VMSite, scale: int) -> None:
    """Jobs that want an image while it is being copied wait, then all run (the WNoDeS promise)."""
    vm_site.guest_image("sl7", "sl7", memory_mb=128)
    vm_site.write_config(default_image="sl7")
    jobs = [vm_site.job(f"w{n}") for n in range(8 * scale)]
    procs = [vm_site.popen("prolog", "--job", j, "--json") for j in jobs]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert sum(not o["hit"] for o in outs) == 1
    assert all(o["domain"] == f"wnodes-{j}" for o, j in zip(outs, jobs, strict=True))
    for j in jobs:
        vm_site.ok("epilog", "--job", j)
    assert not list(Path(vm_site.cache / "leases").glob("*"))
