"""The PBS/Torque and LSF glue in examples/, run as shipped with the real wnodes,
libvirt and guest: each LRMS's exit-code convention for job-level, temporary and
node-level failures (docs/lrms.md). Slurm's glue runs under a real Slurm in
test_slurm.py; HTCondor's sudo rule is checked through --for-caller here.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, VMSite

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def wnodes_bin() -> str:
    venv = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv"))
    exe = venv / "bin" / "wnodes"
    return (
        str(exe) if exe.exists() else subprocess.run(["which", "wnodes"], capture_output=True, text=True).stdout.strip()
    )


def run_glue(site: VMSite, script: str, *args: str, **env: str) -> int:
    full = {**site.env(), "WNODES": wnodes_bin(), **env}
    return subprocess.run([str(REPO / "examples" / script), *args], env=full, capture_output=True, text=True).returncode


@pytest.fixture
def glue_site(vm_site: VMSite) -> VMSite:
    vm_site.guest_image("sl7", "sl7", hold=30)
    vm_site.write_config(
        rules=[
            {"match": {"queue": "short"}, "image": "sl7"},
            {"match": {"env": {"WNODES_IMAGE": "*"}}, "image_from_env": "WNODES_IMAGE", "allow": ["sl7"]},
        ]
    )
    return vm_site


def test_torque_prologue_and_epilogue(glue_site: VMSite) -> None:
    job = glue_site.job("pbs")
    # pbs_mom: id, user, group, job name, limits, queue, account
    args = [f"{job}.srv", "root", "root", "name", "walltime=60", "short", "acct"]
    assert run_glue(glue_site, "pbs/prologue", *args) == 0
    assert glue_site.state(f"{job}.srv") == "running"
    assert run_glue(glue_site, "pbs/epilogue", f"{job}.srv", "root", "root", "name", "1", "", "", "short") == 0
    assert glue_site.state(f"{job}.srv") is None
    # job-level: no rule for queue "long" and no default -> 1 (Torque aborts the job)
    assert run_glue(glue_site, "pbs/prologue", f"{job}-2.srv", "root", "root", "n", "", "long", "") == 1
    # node-level: the master vanished -> 2 (requeue; the node is marked offline)
    (glue_site.shared / "sl7-v1.qcow2").unlink()
    glue_site.ok("invalidate", "sl7")
    assert run_glue(glue_site, "pbs/prologue", f"{job}-3.srv", "root", "root", "n", "", "short", "") == 2
    assert not list((glue_site.cache / "leases").glob("*.json"))


def test_lsf_pre_and_post_exec(glue_site: VMSite) -> None:
    job = glue_site.job("lsf")
    lsf = {"LSB_JOBID": job, "LSB_QUEUE": "short", "LSFUSER": "root", "USER": "root"}
    assert run_glue(glue_site, "lsf/pre_exec", **lsf) == 0
    assert glue_site.state(job) == "running"
    assert run_glue(glue_site, "lsf/post_exec", **lsf) == 0
    assert glue_site.state(job) is None
    # job-level: a forbidden image -> 99 (the job exits without pending again)
    assert run_glue(glue_site, "lsf/pre_exec", **{**lsf, "LSB_QUEUE": "x", "WNODES_IMAGE": "el9"}) == 99
    # node-level -> 1 (pend and retry elsewhere; the host is closed)
    (glue_site.shared / "sl7-v1.qcow2").unlink()
    glue_site.ok("invalidate", "sl7")
    assert run_glue(glue_site, "lsf/pre_exec", **lsf) == 1


def test_for_caller_binds_the_job_to_the_sudo_caller(glue_site: VMSite, tmp_path: Path) -> None:
    """What the HTCondor sudo rule relies on (examples/htcondor/sudoers)."""
    try:
        user = pwd.getpwnam("wnodestest")
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", "wnodestest"], check=True)
        user = pwd.getpwnam("wnodestest")
    ad = tmp_path / ".job.ad"
    ad.write_text('ClusterId = 51\nProcId = 0\nOwner = "wnodestest"\nAcctGroup = "short"\n')
    env = glue_site.env(_CONDOR_JOB_AD=str(ad), SUDO_UID=str(user.pw_uid))
    r = glue_site.run("prolog", "--lrms", "htcondor", "--for-caller", "--json", env=env)
    assert r.code == 0, r.err
    assert r.json()["job"] == f"u{user.pw_uid}-51.0", "the job id is namespaced by the caller"
    assert glue_site.run("epilog", "--lrms", "htcondor", "--for-caller", env=env).code == 0
    # someone else's job ad
    other = glue_site.env(_CONDOR_JOB_AD=str(ad), SUDO_UID="0")
    r = glue_site.run("prolog", "--lrms", "htcondor", "--for-caller", env=other)
    assert r.code == 65 and "a user may only drive their own jobs" in r.err
    # no fact may be overridden under the sudo rule
    r = glue_site.run("prolog", "--lrms", "htcondor", "--for-caller", "--queue", "x", env=env)
    assert r.code == 64
    assert not list((glue_site.cache / "leases").glob("*.json"))
