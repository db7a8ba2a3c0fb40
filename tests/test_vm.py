"""The VM lifecycle end to end on real libvirt, qemu-img and a real booting guest (TCG)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import VMSite, sha256

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def leases(site: VMSite) -> list[str]:
    d = site.cache / "leases"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def job_dirs(site: VMSite) -> list[str]:
    d = site.cache / "run"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_two_jobs_share_one_copy_and_write_only_their_overlays(vm_site: VMSite) -> None:
    master = vm_site.guest_image("sl7", "sl7")
    vm_site.write_config(default_image="sl7")
    master_sum = sha256(master)
    a, b = vm_site.job("a"), vm_site.job("b")
    ja = vm_site.ok("prolog", "--job", a, "--json").json()
    jb = vm_site.ok("prolog", "--job", b, "--json").json()
    assert ja["hit"] is False and jb["hit"] is True
    assert ja["domain"] == f"wnodes-{a}" and ja["domain_type"] == "qemu"
    copies = list((vm_site.cache / "images" / "sl7").glob("*.qcow2"))
    assert len(copies) == 1, "one cached copy serves both jobs"
    copy_sum = sha256(copies[0])
    rows = {r["job"]: r for r in vm_site.ok("ps", "--json").json()}
    assert rows[a]["image"] == rows[b]["image"] == "sl7"
    for job in (a, b):
        out = vm_site.wait_console(job, "WNODES-GUEST-OK")
        assert "WNODES-GUEST-OK image=sl7 boots=1" in out, "each guest sees a pristine disk"
        vm_site.wait_gone(job)
        overlay = vm_site.cache / "run" / job / "disk.qcow2"
        assert overlay.stat().st_size > 1 << 20, "the guest's writes landed in its own overlay"
    assert sha256(master) == master_sum, "the master is never written"
    assert sha256(copies[0]) == copy_sum, "the cached copy is never written"
    st = copies[0].stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o444), "libvirt did not relabel the shared copy"
    for job in (a, b):
        assert vm_site.ok("epilog", "--job", job, "--json").json()["lease_removed"] is True
        assert vm_site.state(job) is None
    assert leases(vm_site) == [] and job_dirs(vm_site) == []


def test_invalidate_while_a_vm_runs_on_the_old_version(vm_site: VMSite) -> None:
    vm_site.guest_image("sl7", "sl7", hold=60)
    vm_site.write_config(default_image="sl7")
    old = vm_site.job("old")
    j1 = vm_site.ok("prolog", "--job", old, "--json").json()
    v1_path = Path(json.loads((vm_site.cache / "leases" / f"{old}.json").read_text())["path"])
    vm_site.wait_console(old, "WNODES-GUEST-TICK 1")

    vm_site.guest_image("sl7", "sl7v2", version="v2", hold=60)
    vm_site.write_config()
    inv = vm_site.ok("invalidate", "sl7", "--json").json()
    assert inv["versions"][0]["removed"] is False and any(u.startswith("lease:") for u in inv["versions"][0]["users"])
    gc = vm_site.ok("cache", "gc", "--json").json()
    assert v1_path.exists(), "neither invalidate nor gc removes a version under a running VM"
    assert not any(e["removed"] and e["path"] == str(v1_path) for e in gc["entries"])

    # The running guest keeps working and writing after the invalidate and the gc.
    ticks = vm_site.console(old).count("WNODES-GUEST-TICK")
    vm_site.wait_console(old, f"WNODES-GUEST-TICK {ticks + 2}")
    assert vm_site.state(old) == "running"

    new = vm_site.job("new")
    j2 = vm_site.ok("prolog", "--job", new, "--json").json()
    assert j2["version"].startswith("sl7-v2.qcow2@") and j1["version"].startswith("sl7-v1.qcow2@")
    assert "image=sl7v2" in vm_site.wait_console(new, "WNODES-GUEST-OK")

    vm_site.ok("epilog", "--job", old)
    assert v1_path.exists(), "gc, not the epilog, removes the old version"
    vm_site.ok("cache", "gc")
    assert not v1_path.exists(), "once the last job on v1 ended, gc removed it"
    vm_site.ok("epilog", "--job", new)


@pytest.mark.parametrize("step", ["select", "fetch", "snapshot", "start"])
def test_prolog_failure_at_each_step_rolls_back(vm_site: VMSite, step: str, tmp_path: Path) -> None:
    vm_site.guest_image("sl7", "sl7")
    vm_site.write_config(default_image="sl7")
    vm_site.ok("fetch", "sl7")  # a warm cache: the rollback must not touch it
    cache_before = sorted(p.name for p in (vm_site.cache / "images" / "sl7").iterdir())
    env = vm_site.env()
    expected = {"select": 65, "fetch": 69, "snapshot": 71, "start": 71}[step]
    if step == "select":
        vm_site.extra.pop("default_image")
        vm_site.write_config(rules=[{"match": {"queue": "cms"}, "image": "sl7"}])
    elif step == "fetch":
        vm_site.ok("invalidate", "sl7")
        (vm_site.shared / "sl7-v1.qcow2").unlink()  # the master vanishes from shared storage
        cache_before = []
    elif step == "snapshot":
        # Fault injection: the real qemu-img cannot be made to fail on demand,
        # so a stand-in that always fails goes first on PATH.
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "qemu-img").write_text("#!/bin/sh\necho 'qemu-img: injected failure' >&2\nexit 1\n")
        (fake / "qemu-img").chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    elif step == "start":
        vm_site.extra["libvirt"] = {**vm_site.extra["libvirt"], "network": "no-such-network"}
        vm_site.write_config()
    job = vm_site.job(step)
    r = vm_site.run("prolog", "--job", job, env=env)
    assert r.code == expected, r.err
    assert len(r.err_lines) == 1
    assert leases(vm_site) == [] and job_dirs(vm_site) == [], "no lease, overlay or job directory is left"
    assert vm_site.state(job) is None, "no domain is left"
    assert sorted(p.name for p in (vm_site.cache / "images" / "sl7").iterdir()) == cache_before


def test_epilog_is_idempotent(vm_site: VMSite) -> None:
    vm_site.guest_image("sl7", "sl7", hold=60)
    vm_site.write_config(default_image="sl7")
    never = vm_site.job("never")
    assert vm_site.ok("epilog", "--job", never).out == f"job {never}: nothing left to clean\n"
    job = vm_site.job("x")
    vm_site.ok("prolog", "--job", job)
    first = vm_site.ok("stop", "--job", job, "--json").json()
    assert first == {"job": job, "domain_destroyed": True, "overlay_removed": True, "lease_removed": True}
    second = vm_site.ok("stop", "--job", job, "--json").json()
    assert second == {"job": job, "domain_destroyed": False, "overlay_removed": False, "lease_removed": False}
    # After a crash: the domain is gone but the lease and overlay are still there.
    crashed = vm_site.job("crashed")
    vm_site.ok("prolog", "--job", crashed)
    subprocess.run(["virsh", "-q", "-c", vm_site.uri, "destroy", f"wnodes-{crashed}"], check=True)
    assert vm_site.ok("epilog", "--job", crashed, "--json").json()["lease_removed"] is True
    assert leases(vm_site) == [] and job_dirs(vm_site) == []


def test_prolog_of_a_requeued_job_clears_what_a_crash_left(vm_site: VMSite) -> None:
    vm_site.guest_image("sl7", "sl7")
    vm_site.write_config(default_image="sl7")
    job = vm_site.job("rq")
    vm_site.ok("prolog", "--job", job)
    vm_site.wait_gone(job)  # the node "crashed": no epilog ran
    vm_site.ok("prolog", "--job", job)
    assert "WNODES-GUEST-OK" in vm_site.wait_console(job, "WNODES-GUEST-OK")
    vm_site.ok("epilog", "--job", job)


def test_leases_of_vanished_domains_are_reaped_after_the_grace_period(vm_site: VMSite) -> None:
    vm_site.guest_image("sl7", "sl7")
    vm_site.write_config(default_image="sl7")
    job = vm_site.job("gone")
    vm_site.ok("prolog", "--job", job)
    vm_site.wait_gone(job)
    assert vm_site.ok("cache", "gc", "--json").json()["reaped_jobs"] == [], "within the grace period"
    assert leases(vm_site) == [f"{job}.json"]
    vm_site.write_config(lease_grace_seconds=0)
    assert vm_site.ok("cache", "gc", "--json").json()["reaped_jobs"] == [job]
    assert leases(vm_site) == [] and job_dirs(vm_site) == []


@pytest.mark.parametrize("job", ["<x/>", "a;reboot", "../../etc", "a b", "-rf", "x" * 65, "é"])
def test_hostile_job_ids_are_refused(vm_site: VMSite, job: str) -> None:
    vm_site.guest_image("sl7", "sl7")
    vm_site.write_config(default_image="sl7")
    r = vm_site.run("prolog", "--job", job)
    assert r.code == 65 and "is not usable" in r.err and len(r.err_lines) == 1
    assert leases(vm_site) == [] and job_dirs(vm_site) == []


def test_ps_lists_state_image_version_and_overlay(vm_site: VMSite) -> None:
    vm_site.guest_image("sl7", "sl7", hold=30)
    vm_site.write_config(default_image="sl7")
    job = vm_site.job("ps")
    env = vm_site.env(SLURM_JOB_ID=job, SLURM_JOB_UID=str(os.getuid()))
    vm_site.ok("prolog", env=env)
    rows = [r for r in vm_site.ok("ps", "--json").json() if r["job"] == job]
    assert len(rows) == 1
    row = rows[0]
    assert row["state"] == "running" and row["image"] == "sl7" and row["uid"] == os.getuid()
    assert row["version"].startswith("sl7-v1.qcow2@") and row["overlay"].endswith("/disk.qcow2")
    human = vm_site.ok("ps").out.splitlines()
    assert human[0].split() == ["job", "state", "image", "version", "overlay", "user"]
    vm_site.ok("epilog", env=env)
    assert [r for r in vm_site.ok("ps", "--json").json() if r["job"] == job] == []


def test_start_wait_reports_the_end(vm_site: VMSite) -> None:
    vm_site.guest_image("el9", "el9")
    vm_site.write_config(default_image="el9")
    job = vm_site.job("w")
    vm_site.ok("snapshot", "el9", "--job", job, "--json")
    out = vm_site.ok("start", "--job", job, "--wait", "--json").json()
    assert out["ended"] is True and any("WNODES-GUEST-OK image=el9" in line for line in out["console_tail"])
    vm_site.ok("stop", "--job", job)


def test_domain_xml_is_built_from_the_admins_template(vm_site: VMSite) -> None:
    """What an admin's template keeps and what wnodes sets (docs/vm.md)."""
    template = vm_site.root / "etc" / "domain.xml"
    template.write_text(
        "<domain type='kvm'><name>x</name><memory>1</memory><currentMemory>1</currentMemory>"
        "<cpu mode='host-model'/><clock offset='utc'/><os><type>hvm</type></os><on_reboot>restart</on_reboot>"
        "<devices><disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vda'/></disk>"
        "<disk type='file' device='cdrom'><source file='/srv/tools.iso'/><target dev='hdc'/></disk>"
        "<serial type='pty'/><interface type='network'><source network='site'/></interface></devices></domain>"
    )
    template.chmod(0o644)
    vm_site.guest_image("sl7", "sl7", vcpus=2)
    vm_site.extra["libvirt"] = {**vm_site.extra["libvirt"], "template": str(template), "network": "default"}
    vm_site.write_config(default_image="sl7")
    job = vm_site.job("tpl")
    vm_site.ok("snapshot", "sl7", "--job", job)
    from wnodes_cli import config, domain
    from wnodes_cli.jobs import Leases

    cfg = config.load(str(vm_site.config_path))
    lease = Leases(cfg.cache_dir).get(job)
    assert lease is not None
    root = ET.fromstring(domain.build(cfg, cfg.images["sl7"], lease, Path("/c.log"), "qemu"))
    assert root.get("type") == "qemu" and root.findtext("name") == f"wnodes-{job}"
    assert root.find("cpu") is not None and root.find("clock") is not None, "the admin's elements stay"
    assert root.find("currentMemory") is None and root.findtext("memory") == "192" and root.findtext("vcpu") == "2"
    assert root.findtext("on_reboot") == "destroy"
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "hdc"]  # type: ignore[union-attr]
    vda = disks[0]
    assert vda.find("source").get("file") == lease.overlay  # type: ignore[union-attr]
    assert vda.find("backingStore/source").get("file") == lease.path  # type: ignore[union-attr]
    assert vda.find("backingStore/source/seclabel").get("relabel") == "no"  # type: ignore[union-attr]
    assert "/etc/shadow" not in ET.tostring(root, encoding="unicode")
    assert root.find("devices/serial/log").get("file") == "/c.log"  # type: ignore[union-attr]
    assert [i.find("source").get("network") for i in root.findall("devices/interface")] == ["site"]  # type: ignore[union-attr]
    vm_site.ok("stop", "--job", job)
