"""Property-based tests (hypothesis) of config loading and rule matching.

Properties:
- loading any YAML document either yields a Config or raises ConfigError whose
  every problem is one line naming the file; nothing else escapes;
- for any job facts, selection yields one of the configured images, or a
  JobError; a job's own request only ever yields a name from the rule's
  allow list; --explain never changes the choice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wnodes_cli import config as config_mod
from wnodes_cli.errors import ConfigError, JobError
from wnodes_cli.jobinfo import JobFacts
from wnodes_cli.selection import select

pytestmark = pytest.mark.stress

KEYS = [
    "cache_dir",
    "images",
    "rules",
    "default_image",
    "hostgroups",
    "cache_max_bytes",
    "lock_timeout",
    "copy_command",
    "libvirt",
    "master",
    "format",
    "match",
    "image",
    "queue",
    "uid",
    "env",
    "allow",
    "image_from_env",
    "refresh",
    "vcpus",
    "re:x",
    "../x",
    "a/b",
    "",
    "sl7",
    "el9",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(
        ["/abs", "rel", "re:(", "re:.*", "n[1-", "1-9", "qcow2", "raw", "sl7", "el9", "*", "{src}", "80%", "1G"]
    ),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(0, 3)), inner, max_size=5),
    ),
    max_leaves=25,
)

HOSTILE = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)


def load_text(tmp: Path, text: str) -> config_mod.Config:
    path = tmp / "wnodes.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return config_mod.load(str(path))


def test_loading_any_document_fails_cleanly(tmp_path: Path, scale: int, reliability: list[dict[str, Any]]) -> None:
    os.chmod(tmp_path, 0o755)
    seen = {"valid": 0, "refused": 0}

    @settings(max_examples=300 * scale, deadline=None, suppress_health_check=list(HealthCheck))
    @given(documents)
    def check(doc: Any) -> None:
        try:
            text = yaml.safe_dump(doc)
        except yaml.YAMLError:
            return
        try:
            load_text(tmp_path, text)
            seen["valid"] += 1
        except ConfigError as exc:
            seen["refused"] += 1
            assert exc.problems and all("\n" not in p for p in exc.problems)
            assert all(str(tmp_path) in p for p in exc.problems)

    check()

    @settings(max_examples=200 * scale, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(max_size=200))
    def check_text(text: str) -> None:
        try:
            load_text(tmp_path, text)
        except ConfigError as exc:
            assert all("\n" not in p for p in exc.problems)

    check_text()
    reliability.append(
        {
            "case": "fuzz: config loading",
            "count": 500 * scale,
            "checked": "every document loaded or was refused with one-line problems naming the file",
            "lost": 0,
            "valid": seen["valid"],
            "refused": seen["refused"],
        }
    )


patterns = st.one_of(
    st.sampled_from(["cms", "c*", "re:^a.*", "re:[0-9]+", "?", "*", "atlas", "[ab]*"]),
    st.text(alphabet="abcxyz*?[]", min_size=1, max_size=5),
)
matches = st.fixed_dictionaries(
    {},
    optional={
        "queue": patterns,
        "user": patterns,
        "group": patterns,
        "account": patterns,
        "vo": patterns,
        "fqan": patterns,
        "uid": st.one_of(st.integers(0, 3000), st.just("1000-1999")),
        "gid": st.integers(0, 3000),
        "hostgroup": st.just("gpu"),
        "env": st.dictionaries(st.sampled_from(["GRID_VO", "WNODES_IMAGE"]), patterns, min_size=1, max_size=2),
    },
)
IMAGES = ["sl7", "el8", "el9"]
rules = st.lists(
    st.one_of(
        st.builds(lambda m, i: {"match": m, "image": i}, matches, st.sampled_from(IMAGES)),
        st.builds(
            lambda m, a: {"match": m, "image_from_env": "WNODES_IMAGE", "allow": a},
            matches,
            st.lists(st.sampled_from(IMAGES), min_size=1, max_size=3, unique=True),
        ),
    ),
    max_size=6,
)
facts = st.builds(
    JobFacts,
    job_id=st.one_of(st.none(), HOSTILE),
    queue=st.one_of(st.none(), HOSTILE),
    uid=st.one_of(st.none(), st.integers(0, 70000)),
    gid=st.one_of(st.none(), st.integers(0, 70000)),
    user=st.one_of(st.none(), HOSTILE),
    group=st.one_of(st.none(), HOSTILE),
    account=st.one_of(st.none(), HOSTILE),
    host=st.one_of(st.none(), st.sampled_from(["wn-gpu03", "wn-cpu01"]), HOSTILE),
    features=st.lists(HOSTILE, max_size=3).map(tuple),
    vo=st.one_of(st.none(), HOSTILE),
    fqan=st.lists(HOSTILE, max_size=2).map(tuple),
    env=st.dictionaries(
        st.sampled_from(["GRID_VO", "WNODES_IMAGE", "OTHER"]),
        st.one_of(HOSTILE, st.sampled_from([*IMAGES, "../el9", "el9 "])),
        max_size=3,
    ),
)


def test_selection_only_ever_yields_listed_images(
    tmp_path: Path, scale: int, reliability: list[dict[str, Any]]
) -> None:
    os.chmod(tmp_path, 0o755)
    outcomes = {"chosen": 0, "refused": 0}

    @settings(max_examples=400 * scale, deadline=None, suppress_health_check=list(HealthCheck))
    @given(rules, facts, st.booleans())
    def check(rule_list: list[dict[str, Any]], job: JobFacts, with_default: bool) -> None:
        doc: dict[str, Any] = {
            "cache_dir": "/var/cache/x",
            "images": {i: {"master": f"/m/{i}"} for i in IMAGES},
            "rules": rule_list,
            "hostgroups": {"gpu": "wn-gpu[01-20]"},
        }
        if with_default:
            doc["default_image"] = "sl7"
        cfg = load_text(tmp_path, yaml.safe_dump(doc))
        try:
            chosen = select(cfg, job)
        except JobError as exc:
            outcomes["refused"] += 1
            assert "\n" not in str(exc)
            return
        outcomes["chosen"] += 1
        assert chosen.image in IMAGES
        if isinstance(chosen.rule, int):
            rule = cfg.rules[[r.number for r in cfg.rules].index(chosen.rule)]
            if rule.image_from_env:
                assert chosen.image in rule.allow and job.env.get("WNODES_IMAGE") == chosen.image
        else:
            assert chosen.image == "sl7" and with_default
        assert select(cfg, job, explain=True).image == chosen.image

    check()
    reliability.append(
        {
            "case": "fuzz: rule matching",
            "count": 400 * scale,
            "checked": "every choice was a configured image; a job's own request only from the allow list; "
            "--explain agreed",
            "lost": 0,
            **outcomes,
        }
    )
