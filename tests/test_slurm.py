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


def start_slurm(vm_site: VMSite, plugstack: str | None = None) -> Iterator[Slurm]:
    state = Path(tempfile.mkdtemp(prefix="wnodes-slurm-", dir="/var/tmp"))
    state.chmod(0o755)
    for kind in ("prolog", "epilog"):
        # What /etc/default/wnodes would say on a real node; then the example, as shipped.
        wrapper = state / kind
        wrapper.write_text(
            f"#!/bin/sh\nWNODES={wnodes_bin()}\nWNODES_CONFIG={vm_site.config_path}\nexport WNODES WNODES_CONFIG\n"
            f"exec {REPO / 'examples' / 'slurm' / kind}\n"
        )
        wrapper.chmod(0o755)
    env = {**os.environ, **({"PLUGSTACK": plugstack} if plugstack else {})}
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "start-slurm"), str(state), str(state / "prolog"), str(state / "epilog")],
        capture_output=True,
        text=True,
        env=env,
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


def wnodes_bin() -> Path:
    wnodes = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "wnodes"
    if not wnodes.exists():
        wnodes = Path(subprocess.run(["which", "wnodes"], capture_output=True, text=True).stdout.strip())
    return wnodes


def ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
        return pwd.getpwnam(USER)


@pytest.fixture
def slurm(vm_site: VMSite) -> Iterator[Slurm]:
    ensure_user()
    vm_site.guest_image("sl7", "sl7")
    vm_site.guest_image("el9", "el9")
    vm_site.write_config(
        rules=[
            {"match": {"queue": "cms"}, "image": "el9"},
            {"match": {"env": {"WNODES_IMAGE": "*"}}, "image_from_env": "WNODES_IMAGE", "allow": ["sl7", "el9"]},
        ],
        default_image="sl7",
    )
    yield from start_slurm(vm_site)


@pytest.fixture
def slurm_in_vm(vm_site: VMSite, tmp_path: Path) -> Iterator[Slurm]:
    """A Slurm whose tasks run inside the jobs' VMs: the SPANK plugin of examples/slurm."""
    ensure_user()
    vm_site.guest_image("sl7", "sl7", agent=True, memory_mb=192)
    vm_site.guest_image("el9", "el9", agent=True, memory_mb=192)
    vm_site.write_config(rules=[{"match": {"queue": "cms"}, "image": "el9"}], default_image="sl7")
    plugin = vm_site.root / "spank_wnodes.so"
    built = subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(plugin), str(REPO / "examples/slurm/spank_wnodes.c")],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"the SPANK plugin does not build (libslurm-dev missing?): {built.stderr[-300:]}")
    plugstack = vm_site.root / "plugstack.conf"
    plugstack.write_text(f"required {plugin} wnodes={wnodes_bin()} config={vm_site.config_path}\n")
    plugstack.chmod(0o644)
    rule = Path("/etc/sudoers.d/wnodes-slurm-test")
    rule.write_text(f"{USER} ALL=(root) NOPASSWD: {wnodes_bin()} --config {vm_site.config_path} exec --for-caller *\n")
    rule.chmod(0o440)
    try:
        yield from start_slurm(vm_site, str(plugstack))
    finally:
        rule.unlink()


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


def test_sbatch_runs_the_script_inside_the_vm(vm_site: VMSite, slurm_in_vm: Slurm) -> None:
    """The job's own script runs in its VM; its output and exit code are the job's."""
    out = slurm_in_vm.state / "out"
    script = "echo image=$(cat /etc/wnodes-image) uid=$(id -u); echo to-stderr >&2; exit 3"
    for partition, image in (("short", "sl7"), ("cms", "el9")):
        job_id = slurm_in_vm.sbatch("-p", partition, "-o", f"{out}/%j.out", "-e", f"{out}/%j.err", script=script)
        job = slurm_in_vm.wait_done(job_id, timeout=240)
        assert job["ExitCode"] == "3:0", (job, slurm_in_vm.logs())
        assert job["JobState"] == "FAILED"
        assert (out / f"{job_id}.out").read_text() == f"image={image} uid={pwd.getpwnam(USER).pw_uid}\n"
        assert (out / f"{job_id}.err").read_text() == "to-stderr\n"
        assert vm_site.state(job_id) is None, "the epilog stopped the VM"
