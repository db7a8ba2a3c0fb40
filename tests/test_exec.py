"""wnodes exec on real libvirt: the payload runs in the job's VM through the real
qemu-guest-agent, its output streams back through virtiofs, its status is ours."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, VMSite

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def wnodes_bin() -> str:
    exe = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "wnodes"
    return str(exe)


def job_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("wnodestest")
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", "wnodestest"], check=True)
        return pwd.getpwnam("wnodestest")


@pytest.fixture
def vm_job(vm_site: VMSite) -> Iterator[tuple[VMSite, str]]:
    vm_site.guest_image("sl7", "sl7", agent=True, memory_mb=192)
    vm_site.write_config(default_image="sl7")
    job = vm_site.job("x")
    vm_site.ok("prolog", "--job", job, "--uid", str(job_user().pw_uid))
    yield vm_site, job
    vm_site.run("epilog", "--job", job)


def test_output_streams_in_order_and_apart(vm_job: tuple[VMSite, str]) -> None:
    site, job = vm_job
    payload = "echo out1; echo err1 >&2; sleep 2; echo out2; echo err2 >&2; id -u; cat /etc/wnodes-image; pwd"
    p = site.popen("exec", "--job", job, "--workdir", "/scratch/run", "--", "sh", "-c", payload)
    assert p.stdout is not None
    first = p.stdout.readline()
    got_first_at = time.monotonic()
    out, err = p.communicate(timeout=120)
    ended_at = time.monotonic()
    assert p.returncode == 0, err
    assert first == "out1\n"
    assert ended_at - got_first_at > 1.5, "the first line arrived while the payload still ran"
    assert out.splitlines() == ["out2", str(job_user().pw_uid), "sl7", "/scratch/run"]
    assert err.splitlines() == ["err1", "err2"], "stderr is kept apart, in order"


@pytest.mark.parametrize(("payload", "code"), [("true", 0), ("exit 3", 3), ("kill -9 $$", 137)])
def test_exit_status_is_the_payloads(vm_job: tuple[VMSite, str], payload: str, code: int) -> None:
    site, job = vm_job
    assert site.run("exec", "--job", job, "--", "sh", "-c", payload).code == code


def test_sigterm_reaches_the_payload(vm_job: tuple[VMSite, str]) -> None:
    site, job = vm_job
    payload = "trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.2; done"
    p = site.popen("exec", "--job", job, "--", "sh", "-c", payload)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)  # what scancel or a walltime does to the job's process
    out, err = p.communicate(timeout=60)
    assert "got-term" in out, err
    assert p.returncode == 42
    # and an untrapped payload ends as killed by the signal: 128 + 15
    p = site.popen("exec", "--job", job, "--", "sh", "-c", "echo ready; exec sleep 60")
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == 143


def test_env_file(vm_job: tuple[VMSite, str], tmp_path: Path) -> None:
    site, job = vm_job
    env = tmp_path / "env"
    env.write_text("# the job's environment\nFOO=bar baz\nN=1\n")
    r = site.run("exec", "--job", job, "--env-file", str(env), "--", "sh", "-c", 'echo "$FOO/$N"')
    assert r.code == 0 and r.out == "bar baz/1\n"


def test_a_vm_that_never_came_up_has_its_own_code(vm_site: VMSite) -> None:
    vm_site.guest_image("sl7", "sl7", hold=60)  # this image has no guest agent
    vm_site.write_config(default_image="sl7")
    job = vm_site.job("noagent")
    vm_site.ok("prolog", "--job", job)
    r = vm_site.run("exec", "--job", job, "--wait-timeout", "3", "--", "true")
    assert r.code == 76 and "did not answer within 3s" in r.err and len(r.err_lines) == 1
    subprocess.run(["virsh", "-q", "-c", vm_site.uri, "destroy", f"wnodes-{job}"], check=True)
    r = vm_site.run("exec", "--job", job, "--", "true")
    assert r.code == 76 and "is not running" in r.err
    vm_site.ok("epilog", "--job", job)
    assert vm_site.run("exec", "--job", job, "--", "true").code == 66


def test_a_second_user_is_refused(vm_job: tuple[VMSite, str]) -> None:
    site, job = vm_job
    owner = job_user()
    # The owner check under a sudo rule (SUDO_UID is what sudo sets).
    r = site.run("exec", "--for-caller", "--job", job, "--", "true", env=site.env(SUDO_UID="0"))
    assert r.code == 65 and "a user may only drive their own jobs" in r.err
    assert (
        site.run("exec", "--for-caller", "--job", job, "--", "true", env=site.env(SUDO_UID=str(owner.pw_uid))).code == 0
    )
    # And through a real sudo rule, as in examples/sudoers: the owner may, root's job may not be driven.
    rule = Path("/etc/sudoers.d/wnodes-test")
    rule.write_text(
        f'Defaults!{wnodes_bin()} env_keep += "WNODES_CONFIG WNODES_LOG"\n'
        f"wnodestest ALL=(root) NOPASSWD: {wnodes_bin()} exec --for-caller *\n"
    )
    rule.chmod(0o440)
    try:
        other = site.job("root")
        site.ok("prolog", "--job", other, "--uid", "0")
        env = {**site.env(), "HOME": "/tmp"}

        def as_user(job_id: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "runuser",
                    "-u",
                    "wnodestest",
                    "--",
                    "sudo",
                    "-n",
                    wnodes_bin(),
                    "exec",
                    "--for-caller",
                    "--job",
                    job_id,
                    "--",
                    "id",
                    "-u",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        mine = as_user(job)
        assert mine.returncode == 0 and mine.stdout == f"{owner.pw_uid}\n", mine.stderr
        theirs = as_user(other)
        assert theirs.returncode == 65 and "only drive their own jobs" in theirs.stderr
        site.ok("epilog", "--job", other)
    finally:
        rule.unlink()
