"""Image selection: every kind of rule, through the real CLI and the core."""

from __future__ import annotations

import grp
import os
import pwd

import pytest
from conftest import Site

RULES = [
    {"match": {"queue": "cms"}, "image": "el9"},
    {"match": {"queue": "re:^atlas(-[a-z]+)?$"}, "image": "el8"},
    {"match": {"uid": ["5000-5999", 42]}, "image": "el8"},
    {"match": {"gid": 1500}, "image": "el9"},
    {"match": {"user": "ali*"}, "image": "sl7"},
    {"match": {"group": "lhcb"}, "image": "el8"},
    {"match": {"account": ["vo.alice", "vo.cms"]}, "image": "el9"},
    {"match": {"hostgroup": "gpu"}, "image": "el9"},
    {"match": {"feature": "avx512"}, "image": "el8"},
    {"match": {"env": {"GRID_VO": "dteam"}, "queue": "grid"}, "image": "el8"},
    {"match": {"env": {"WNODES_IMAGE": "*"}}, "image_from_env": "WNODES_IMAGE", "allow": ["sl7", "el9"]},
]


@pytest.fixture
def rules_site(site: Site) -> Site:
    for name in ("sl7", "el8", "el9"):
        site.make_master(name, "v1", size_mb=1)
    site.write_config(rules=RULES, default_image="sl7", hostgroups={"gpu": "wn-gpu[01-20]"})
    return site


@pytest.mark.parametrize(
    ("flags", "env", "image", "rule"),
    [
        (["--queue", "cms"], {}, "el9", 1),
        (["--queue", "atlas-prod"], {}, "el8", 2),
        (["--queue", "atlasx"], {}, "sl7", "default"),
        (["--uid", "5123"], {}, "el8", 3),
        (["--uid", "42"], {}, "el8", 3),
        (["--gid", "1500"], {}, "el9", 4),
        (["--user", "alice"], {}, "sl7", 5),
        (["--group", "lhcb"], {}, "el8", 6),
        (["--account", "vo.cms"], {}, "el9", 7),
        (["--host", "wn-gpu07"], {}, "el9", 8),
        (["--host", "wn-gpu07.farm.example.org"], {}, "el9", 8),
        (["--host", "wn-cpu07"], {}, "sl7", "default"),
        (["--queue", "grid"], {"GRID_VO": "dteam"}, "el8", 10),
        (["--queue", "grid"], {"GRID_VO": "atlas"}, "sl7", "default"),
        ([], {"WNODES_IMAGE": "el9"}, "el9", 11),
        ([], {}, "sl7", "default"),
    ],
)
def test_each_kind_of_rule(rules_site: Site, flags: list[str], env: dict[str, str], image: str, rule: object) -> None:
    r = rules_site.ok("select", "--json", *flags, env=rules_site.env(**env))
    assert r.json()["image"] == image
    assert r.json()["rule"] == rule
    plain = rules_site.ok("select", *flags, env=rules_site.env(**env))
    assert plain.out == image + "\n"


def test_slurm_environment_is_read(rules_site: Site) -> None:
    env = rules_site.env(SLURM_JOB_ID="77", SLURM_JOB_PARTITION="cms", SLURM_JOB_UID="5001", SLURMD_NODENAME="wn1")
    assert rules_site.ok("select", env=env).out == "el9\n"
    env.update(SLURM_JOB_PARTITION="short")
    assert rules_site.ok("select", "--json", env=env).json() == {
        "image": "el8",
        "rule": 3,
        "reason": "rule 3: uid 5001 in 5000-5999",
    }
    env.update(SLURM_JOB_UID="7", SLURM_JOB_CONSTRAINTS="avx512&fast")
    assert rules_site.ok("select", env=env).out == "el8\n"


def test_flags_win_over_the_environment(rules_site: Site) -> None:
    env = rules_site.env(SLURM_JOB_PARTITION="cms")
    assert rules_site.ok("select", "--queue", "atlas", env=env).out == "el8\n"


def test_names_are_resolved_from_ids(rules_site: Site) -> None:
    """A Slurm prolog knows the uid; a rule may name the user."""
    me = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    rules_site.write_config(rules=[{"match": {"user": me, "group": group}, "image": "el8"}], default_image="sl7")
    assert rules_site.ok("select", "--uid", str(os.getuid()), "--gid", str(os.getgid())).out == "el8\n"


def test_explain_lists_every_rule(rules_site: Site) -> None:
    r = rules_site.ok("select", "--explain", "--queue", "atlas")
    lines = r.out.splitlines()
    assert lines[0].split() == ["rule", "result", "why"]
    assert len(lines) == 1 + len(RULES) + 2  # header, every rule, default, the choice
    assert lines[-1] == "el8"
    assert "queue 'atlas' is not cms" in lines[1]
    assert lines[2].split()[1] == "match"
    # --json keeps stdout parseable and moves the explanation to stderr
    j = rules_site.ok("select", "--explain", "--json", "--queue", "atlas")
    assert j.json()["image"] == "el8" and "rule" in j.err


def test_no_match_and_no_default_is_a_job_error(site: Site) -> None:
    site.make_master("sl7", "v1", size_mb=1)
    site.write_config(rules=[{"match": {"queue": "cms"}, "image": "sl7"}])
    r = site.run("select", "--queue", "atlas", "--job", "12")
    assert r.code == 65
    assert len(r.err_lines) == 1
    assert "no rule" in r.err and "--explain" in r.err and "'12'" in r.err


def test_forbidden_image_from_env_is_a_job_error(rules_site: Site) -> None:
    r = rules_site.run("select", env=rules_site.env(WNODES_IMAGE="el8"))
    assert r.code == 65
    assert "not allowed by rule 11 (allowed: sl7, el9)" in r.err


def test_image_from_env_requires_allow_list(site: Site) -> None:
    site.make_master("sl7", "v1", size_mb=1)
    site.write_config(rules=[{"match": {"env": {"X": "*"}}, "image_from_env": "X"}])
    r = site.run("select")
    assert r.code == 78 and "allow" in r.err
