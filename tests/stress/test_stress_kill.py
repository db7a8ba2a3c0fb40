"""Kill: SIGKILL at random moments to fetch, snapshot and prolog processes.

The seed is printed (and taken from $WNODES_STRESS_SEED when set) so that a
failing sequence can be replayed. After every kill:
- the next run succeeds (for snapshot and prolog, after the epilog that the
  LRMS runs for a job whose prolog died);
- no partial or corrupt copy is ever used: each copy a fetch returns is
  checked against the master's sha256;
- no lock stays stuck: the next run does not wait for it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import VMSite, sha256

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.stress]

# How long each operation typically runs here: kills land anywhere in it.
WINDOW = {"fetch": 0.3, "snapshot": 0.2, "prolog": 0.6}


def killed(site: VMSite, args: list[str], delay: float) -> bool:
    """Run wnodes, SIGKILL it after `delay`; True if it was still running then."""
    p = site.popen(*args)
    time.sleep(delay)
    alive = p.poll() is None
    if alive:
        p.send_signal(signal.SIGKILL)
    p.communicate()
    return alive


def test_sigkill_at_random_moments(vm_site: VMSite, scale: int, reliability: list[dict[str, object]]) -> None:
    seed = int(os.environ.get("WNODES_STRESS_SEED", random.SystemRandom().randrange(1 << 32)))
    print(f"\nkill test seed: {seed} (replay with WNODES_STRESS_SEED={seed})")
    rng = random.Random(seed)

    # "big": a 128 MiB raw master with a sha256, so that a kill lands mid-copy often.
    big = vm_site.shared / "big-v1.raw"
    with open(big, "wb") as fh:
        block = rng.randbytes(1 << 20)
        for i in range(128):
            fh.write(block[i:] + block[:i])
    (vm_site.shared / "big-v1.raw.sha256").write_text(f"{sha256(big)}  big-v1.raw\n")
    vm_site.point("big", big)
    vm_site.images["big"] = {"master": str(vm_site.shared / "big.raw"), "format": "raw"}
    vm_site.guest_image("sl7", "sl7", memory_mb=128)
    vm_site.write_config(default_image="sl7")
    master_sum = sha256(big)

    counts = {"fetch": [0, 0], "snapshot": [0, 0], "prolog": [0, 0]}  # [runs, landed while running]
    for n in range(50 * scale):
        op = rng.choice(list(WINDOW))
        delay = rng.uniform(0, WINDOW[op])
        job = vm_site.job(f"k{n}")
        counts[op][0] += 1
        if op == "fetch":
            vm_site.ok("invalidate", "big")
            counts[op][1] += killed(vm_site, ["fetch", "big"], delay)
            got = vm_site.ok("fetch", "big", "--timeout", "10", "--json").json()
            assert got["waited_seconds"] < 1, f"seed {seed}, kill {n}: a lock stayed held"
            assert sha256(Path(got["path"])) == master_sum, f"seed {seed}, kill {n}: a corrupt copy was used"
            assert not list((vm_site.cache / "images" / "big").glob(".part-*")), "the next fetch cleared the debris"
        elif op == "snapshot":
            counts[op][1] += killed(vm_site, ["snapshot", "sl7", "--job", job], delay)
            vm_site.ok("stop", "--job", job)
            snap = vm_site.ok("snapshot", "sl7", "--job", job, "--json").json()
            info = json.loads(
                subprocess.run(
                    ["qemu-img", "info", "--output=json", "-U", snap["overlay"]],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            current = vm_site.cache / "images" / "sl7" / os.readlink(vm_site.cache / "images" / "sl7" / "current")
            assert info["backing-filename"] == str(current), f"seed {seed}, kill {n}: overlay on a wrong base"
            assert sha256(current) == sha256(vm_site.shared / "sl7-v1.qcow2")
            vm_site.ok("stop", "--job", job)
        else:
            counts[op][1] += killed(vm_site, ["prolog", "--job", job], delay)
            vm_site.ok("epilog", "--job", job)  # what the LRMS runs for a job whose prolog died
            assert vm_site.state(job) is None and not (vm_site.cache / "run" / job).exists()
            vm_site.ok("prolog", "--job", job)
            vm_site.ok("epilog", "--job", job)
        assert not list((vm_site.cache / "leases").glob("*.json")), f"seed {seed}, kill {n}: a lease was left"

    gc = vm_site.ok("cache", "gc", "--json").json()
    assert all(not e["users"] for e in gc["entries"])
    listing = vm_site.ok("cache", "list", "--json").json()
    assert sorted(r["image"] for r in listing) == ["big", "sl7"], "one current copy per image, nothing else"
    landed = sum(c[1] for c in counts.values())
    assert landed >= 25 * scale, f"only {landed} kills landed while the process ran ({counts}); narrow WINDOW"
    reliability.append(
        {
            "case": "kill",
            "seed": seed,
            "count": 50 * scale,
            "by_operation": {k: {"runs": v[0], "killed_while_running": v[1]} for k, v in counts.items()},
            "checked": "next run succeeded after each kill; every fetched copy matched the master's sha256; no lock "
            "waited on; no lease, overlay, domain or temp file left",
            "lost": 0,
        }
    )
