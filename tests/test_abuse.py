"""Abuse through the job's environment and through image names.

Whatever a job puts in its environment, it gets one of the images the admin
listed or a job-level error, and nothing reaches a path or a command line.
"""

from __future__ import annotations

import pytest
from conftest import Site, tree_state

HOSTILE = [
    "../../etc/shadow",
    "/etc/shadow",
    "sl7/../el9",
    "el9; rm -rf /",
    "$(reboot)",
    "`id`",
    "el9\nsl7",
    "el9 ",
    "EL9",
    "nonexistent",
    "*",
    "",
    "sl7\x1b[2J",
]


@pytest.fixture
def abuse_site(site: Site) -> Site:
    site.make_master("sl7", "v1", size_mb=1)
    site.make_master("el9", "v1", size_mb=1)
    site.write_config(
        rules=[
            {"match": {"env": {"WNODES_IMAGE": "*"}}, "image_from_env": "WNODES_IMAGE", "allow": ["el9"]},
        ],
        default_image="sl7",
    )
    site.ok("fetch", "sl7")
    return site


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_image_request_is_a_job_error(abuse_site: Site, value: str) -> None:
    before = tree_state(abuse_site.cache)
    r = abuse_site.run("select", "--json", env=abuse_site.env(WNODES_IMAGE=value))
    assert r.code == 65, r.err
    assert len(r.err_lines) == 1, "the error must be one line, whatever the job sent"
    assert "\x1b" not in r.err
    assert "not allowed by rule 1 (allowed: el9)" in r.err
    assert r.out == ""
    assert tree_state(abuse_site.cache) == before


def test_the_allowed_value_is_the_only_way_in(abuse_site: Site) -> None:
    assert abuse_site.ok("select", env=abuse_site.env(WNODES_IMAGE="el9")).out == "el9\n"


@pytest.mark.parametrize("name", ["../sl7", "/etc/passwd", "sl7/../../x", "sl7;id", "", "el9\n"])
def test_fetch_of_an_unknown_name_touches_nothing(abuse_site: Site, name: str) -> None:
    before = tree_state(abuse_site.cache)
    r = abuse_site.run("fetch", name)
    assert r.code == 65
    assert len(r.err_lines) == 1 and "is not configured (known: el9, sl7)" in r.err
    assert tree_state(abuse_site.cache) == before


@pytest.mark.parametrize("value", ["cms\nx", "cms\x01", "../" * 40, "q" * 10000])
def test_hostile_facts_only_fail_to_match(abuse_site: Site, value: str) -> None:
    abuse_site.write_config(rules=[{"match": {"queue": "cms"}, "image": "el9"}], default_image="sl7")
    env = abuse_site.env(SLURM_JOB_PARTITION=value, SLURM_JOB_UID="x; id")
    r = abuse_site.run("select", "--explain", env=env)
    assert r.code == 0 and r.out.splitlines()[-1] == "sl7"
    assert all(len(line) < 300 for line in r.out.splitlines()), "untrusted values are cut short in explanations"
