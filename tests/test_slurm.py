"""A real Slurm (munged, slurmctld, slurmd on localhost) running the example
prolog and epilog of examples/slurm/ on real libvirt with a real guest.

Set up by scripts/start-slurm; skipped, with the reason, when Slurm cannot
start (scripts/test installs slurm-wlm and munge so that CI runs it).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, VMSite

pytestmark = [pytest.mark.libvirt, pytest.mark.slurm, pytest.mark.slow]

USER = "wnodestest"


class Slurm:
    def __init__(self, state: Path, user: str) -> None:
        self.state = state
        self.user = user
        self.env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}

    def sbatch(self, *args: str, script: str) -> str:
        cmd = ["sbatch", "--parsable", *args, "--wrap", script]
        r = subprocess.run(
            ["runuser", "-u", self.user, "--", *cmd], env=self.env, capture_output=True, text=True, cwd="/tmp"
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(
            ["scontrol", "-o", "show", "job", job_id], env=self.env, capture_output=True, text=True
        ).stdout
        fields = {}
        for word in out.split():
            key, _, value = word.partition("=")
            fields[key] = value
        # AdminComment can hold spaces: take it whole.
        if "AdminComment=" in out:
            fields["AdminComment"] = out.split("AdminComment=", 1)[1].split(" Comment=", 1)[0]
        return fields

    def wait_done(self, job_id: str, timeout: float = 120) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} did not end: {self.job(job_id)}; {self.logs()}")

    def node_state(self) -> str:
        return subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout.strip()

    def logs(self) -> str:
        return "\n".join(
            p.read_text()[-1500:] for p in (self.state / "slurmd.log", self.state / "slurmctld.log") if p.exists()
        )


@pytest.fixture
def slurm(vm_site: VMSite) -> Iterator[Slurm]:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    vm_site.guest_image("sl7", "sl7")
    vm_site.guest_image("el9", "el9")
    vm_site.write_config(
        rules=[
            {"match": {"queue": "cms"}, "image": "el9"},
            {"match": {"env": {"WNODES_IMAGE": "*"}}, "image_from_env": "WNODES_IMAGE", "allow": ["sl7", "el9"]},
        ],
        default_image="sl7",
    )
    state = Path(tempfile.mkdtemp(prefix="wnodes-slurm-", dir="/var/tmp"))
    state.chmod(0o755)
    wnodes = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "wnodes"
    if not wnodes.exists():
        wnodes = Path(subprocess.run(["which", "wnodes"], capture_output=True, text=True).stdout.strip())
    for kind in ("prolog", "epilog"):
        # What /etc/default/wnodes would say on a real node; then the example, as shipped.
        wrapper = state / kind
        wrapper.write_text(
            f"#!/bin/sh\nWNODES={wnodes}\nWNODES_CONFIG={vm_site.config_path}\nexport WNODES WNODES_CONFIG\n"
            f"exec {REPO / 'examples' / 'slurm' / kind}\n"
        )
        wrapper.chmod(0o755)
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "start-slurm"), str(state), str(state / "prolog"), str(state / "epilog")],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"Slurm could not be started by scripts/start-slurm: {r.stderr.strip()[-400:]}")
    out = state / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    try:
        yield Slurm(state, USER)
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "start-slurm"), "--stop", str(state)])
        subprocess.run(["rm", "-rf", str(state)])


def test_jobs_in_partitions_boot_their_own_images(vm_site: VMSite, slurm: Slurm) -> None:
    out = slurm.state / "out"
    # The job runs on the host here (wnodes exec runs it inside later); it lasts long
    # enough for the guest to boot and print its marker before the epilog stops it.
    script = "sleep 8; echo job-done"
    a = slurm.sbatch("-p", "short", "-o", f"{out}/%j.out", script=script)
    b = slurm.sbatch("-p", "cms", "-o", f"{out}/%j.out", script=script)
    for job_id, image in ((a, "sl7"), (b, "el9")):
        job = slurm.wait_done(job_id)
        assert job["JobState"] == "COMPLETED", (job, slurm.logs())
        assert (out / f"{job_id}.out").read_text().strip() == "job-done"
        console = (vm_site.cache / "consoles" / f"{job_id}.log").read_text()
        assert f"WNODES-GUEST-OK image={image}" in console, "the job's VM booted its partition's image"
        # the epilog removed the domain, the overlay and the lease
        assert vm_site.state(job_id) is None
        assert not (vm_site.cache / "run" / job_id).exists()
        assert not (vm_site.cache / "leases" / f"{job_id}.json").exists()
    assert slurm.node_state() == "idle"


def test_a_forbidden_image_fails_the_job_not_the_node(vm_site: VMSite, slurm: Slurm) -> None:
    out = slurm.state / "out"
    marker = out / "ran"
    bad = slurm.sbatch(
        "-p", "short", "--comment", "wnodes.image=centos5", "-o", f"{out}/%j.out", script=f"touch {marker}"
    )
    job = slurm.wait_done(bad)
    assert job["JobState"] == "CANCELLED", job
    assert "not allowed" in job.get("AdminComment", ""), job
    assert not marker.exists(), "the job's script never ran"
    assert slurm.node_state() == "idle", "a job-level failure does not drain the node"
    assert not list((vm_site.cache / "leases").glob("*.json"))
    # ...and the node still runs the next job, which asks for an allowed image.
    good = slurm.sbatch("-p", "short", "--comment", "wnodes.image=el9", "-o", f"{out}/%j.out", script="sleep 6")
    assert slurm.wait_done(good)["JobState"] == "COMPLETED"
    assert "image=el9" in (vm_site.cache / "consoles" / f"{good}.log").read_text()
