"""LRMS adapters: each LRMS's real variable names and argument order.

Sources, cited per test:
- Slurm: slurm.conf(5) "PROLOG AND EPILOG SCRIPTS"; https://slurm.schedmd.com/prolog_epilog.html
- PBS/Torque: TORQUE Administrator Guide, "Prologue and epilogue scripts" (script arguments)
- LSF: IBM Spectrum LSF 10.1, "Environment variables set for job execution" and
  "Pre- and post-execution processing behavior"
- HTCondor: HTCondor manual, USER_JOB_WRAPPER (_CONDOR_JOB_AD) and "Job ClassAd Attributes"
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from conftest import Site

from wnodes_cli.errors import UsageError
from wnodes_cli.jobinfo import detect, from_environment, parse_classad


def test_slurm_prolog_environment() -> None:
    # slurm.conf(5): the Prolog sees SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_USER,
    # SLURM_JOB_PARTITION, SLURM_JOB_CONSTRAINTS, SLURMD_NODENAME (and, in recent
    # releases, SLURM_JOB_ACCOUNT, SLURM_JOB_GID, SLURM_JOB_COMMENT).
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_UID": "1001",
        "SLURM_JOB_GID": "1500",
        "SLURM_JOB_USER": "alice",
        "SLURM_JOB_PARTITION": "cms",
        "SLURM_JOB_ACCOUNT": "cms",
        "SLURM_JOB_CONSTRAINTS": "avx2&ssd",
        "SLURM_JOB_COMMENT": "submitted by ce01; vo=cms fqan=/cms/Role=pilot fqan=/cms",
        "SLURMD_NODENAME": "wn017",
    }
    f = from_environment(env)
    assert (f.job_id, f.uid, f.gid, f.user, f.queue, f.account, f.host) == (
        "4242",
        1001,
        1500,
        "alice",
        "cms",
        "cms",
        "wn017",
    )
    assert f.features == ("avx2", "ssd")
    assert (f.vo, f.fqan) == ("cms", ("/cms/Role=pilot", "/cms"))
    assert detect(env, ()) == "slurm"


def test_torque_prologue_arguments() -> None:
    # TORQUE prologue: argv[1] job id, [2] user, [3] group, [4] job name,
    # [5] requested resource limits, [6] queue, [7] account.
    args = ["1234.torque.example.org", "alice", "atlas", "analysis", "nodes=1,walltime=01:00:00", "long", "atlas-prod"]
    f = from_environment({}, None, args)
    assert detect({}, args) == "pbs"
    assert (f.job_id, f.user, f.group, f.queue, f.account) == (
        "1234.torque.example.org",
        "alice",
        "atlas",
        "long",
        "atlas-prod",
    )
    # PBS Pro passes only id, user, group; array elements look like 12[3].server
    f = from_environment({}, "pbs", ["12[3].pbs", "bob", "cms"])
    assert (f.job_id, f.user, f.group, f.queue) == ("12_3.pbs", "bob", "cms", None)
    with pytest.raises(UsageError):
        from_environment({}, "pbs", [])


def test_lsf_pre_exec_environment() -> None:
    # LSF sets LSB_JOBID, LSB_JOBINDEX (arrays), LSB_QUEUE, LSB_HOSTS, LSB_PROJECT_NAME, LSFUSER.
    env = {
        "LSB_JOBID": "777",
        "LSB_JOBINDEX": "0",
        "LSB_QUEUE": "grid",
        "LSB_HOSTS": "wn05 wn05 wn06",
        "LSB_PROJECT_NAME": "lhcb",
        "LSFUSER": "carol",
        "USER": "carol",
        "GRID_VO": "lhcb",
    }
    f = from_environment(env)
    assert detect(env, ()) == "lsf"
    assert (f.job_id, f.queue, f.host, f.account, f.user) == ("777", "grid", "wn05", "lhcb", "carol")
    assert f.env["GRID_VO"] == "lhcb", "pre-exec runs with the job's environment: env rules apply"
    assert from_environment({**env, "LSB_JOBINDEX": "3"}).job_id == "777_3"


AD = """\
ClusterId = 8812
ProcId = 3
Owner = "dave"
AcctGroup = "group_atlas"
AccountingGroup = "group_atlas.dave"
x509UserProxyVOName = "atlas"
x509UserProxyFirstFQAN = "/atlas/Role=production/Capability=NULL"
x509UserProxyFQAN = "/DC=ch/DC=cern/CN=dave,/atlas/Role=production/Capability=NULL,/atlas/Role=NULL"
Cmd = "/home/dave/run.sh"
Environment = "A=1 B=\\"quoted\\""
RequestMemory = 2048
"""


def test_htcondor_job_ad(tmp_path: Path) -> None:
    # The starter writes the job ad and names it in $_CONDOR_JOB_AD for USER_JOB_WRAPPER.
    ad = tmp_path / ".job.ad"
    ad.write_text(AD)
    env = {"_CONDOR_JOB_AD": str(ad)}
    f = from_environment(env)
    assert detect(env, ()) == "htcondor"
    assert (f.job_id, f.user, f.queue, f.account, f.vo) == (
        "8812.3",
        "dave",
        "group_atlas",
        "group_atlas.dave",
        "atlas",
    )
    assert f.fqan == ("/atlas/Role=production/Capability=NULL", "/atlas/Role=NULL")
    assert parse_classad(AD)["Environment"] == 'A=1 B="quoted"'
    with pytest.raises(UsageError):
        from_environment({}, "htcondor")


def test_host_defaults_to_this_node() -> None:
    assert from_environment({"LSB_JOBID": "1"}).host == os.uname().nodename, "no LSB_HOSTS: this node"
    assert from_environment({}, "none").host == os.uname().nodename


def test_uid_and_group_follow_from_the_user_name() -> None:
    me = pwd.getpwuid(os.getuid())
    f = from_environment({}, "pbs", ["1", me.pw_name, ""]).with_names()
    assert (f.uid, f.gid) == (me.pw_uid, me.pw_gid)


@pytest.fixture
def grid_site(site: Site) -> Site:
    for name in ("sl7", "el9", "atlas-prod"):
        site.make_master(name, "v1", size_mb=1)
    site.write_config(
        rules=[
            {"match": {"fqan": "/atlas/Role=production*"}, "image": "atlas-prod"},
            {"match": {"vo": "atlas"}, "image": "el9"},
            {"match": {"account": "cms"}, "image": "el9"},
        ],
        default_image="sl7",
    )
    return site


def test_grid_information_selects_through_each_lrms(grid_site: Site, tmp_path: Path) -> None:
    """How a CE's VO/FQAN reaches the rules (docs/lrms.md, "Grid information")."""
    ad = tmp_path / "job.ad"
    ad.write_text(AD)
    cases = [
        # HTCondor-CE: the schedd puts the proxy's VO and FQANs in the job ad.
        ({"_CONDOR_JOB_AD": str(ad)}, [], "atlas-prod"),
        (
            {"_CONDOR_JOB_AD": str(ad)},
            ["--fqan", "/atlas/Role=NULL"],
            "el9",
        ),
        # Slurm: the CE submits with --account=<vo>, or writes vo=/fqan= into --comment.
        ({"SLURM_JOB_ID": "1", "SLURM_JOB_ACCOUNT": "cms"}, [], "el9"),
        ({"SLURM_JOB_ID": "2", "SLURM_JOB_COMMENT": "vo=atlas"}, [], "el9"),
        ({"SLURM_JOB_ID": "3", "SLURM_JOB_COMMENT": "fqan=/atlas/Role=production"}, [], "atlas-prod"),
        ({"SLURM_JOB_ID": "4"}, [], "sl7"),
        # PBS/Torque: the account argument.
        ({}, ["1.srv", "u", "g", "n", "l", "q", "cms"], "el9"),
    ]
    for env, args, image in cases:
        flags = [a for a in args if a.startswith("--") or a.startswith("/")]
        positional = [a for a in args if a not in flags]
        r = grid_site.ok("select", *flags, *positional, env=grid_site.env(**env))
        assert r.out.strip() == image, (env, args, r.out)
