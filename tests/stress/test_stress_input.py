"""A catalogue of bad input. Each case: its exit code, a one-line error, and no
change to the cache directory (a listing with checksums before and after)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import Site, is_root, tree_state

pytestmark = pytest.mark.stress


class Case(NamedTuple):
    name: str
    prepare: Callable[[Site], tuple[list[str], dict[str, str]]]
    code: int
    says: str


def config_text(text: str) -> Callable[[Site], tuple[list[str], dict[str, str]]]:
    def prepare(site: Site) -> tuple[list[str], dict[str, str]]:
        site.config_path.write_text(text.replace("CACHE", str(site.cache)).replace("SHARED", str(site.shared)))
        site.config_path.chmod(0o644)
        return ["fetch", "sl7"], {}

    return prepare


def command(*args: str, **env: str) -> Callable[[Site], tuple[list[str], dict[str, str]]]:
    return lambda site: (list(args), dict(env))


def with_master(change: Callable[[Site], None], *args: str) -> Callable[[Site], tuple[list[str], dict[str, str]]]:
    def prepare(site: Site) -> tuple[list[str], dict[str, str]]:
        site.ok("invalidate", "el9")
        change(site)
        return list(args or ("fetch", "el9")), {}

    return prepare


def dangling(site: Site) -> None:
    (site.shared / "el9-v1.qcow2").unlink()


def fifo(site: Site) -> None:
    os.mkfifo(site.shared / "el9-fifo.qcow2")
    site.point("el9", site.shared / "el9-fifo.qcow2")


def directory(site: Site) -> None:
    (site.shared / "el9-dir.qcow2").mkdir()
    site.point("el9", site.shared / "el9-dir.qcow2")


def loop(site: Site) -> None:
    (site.shared / "el9.qcow2").unlink()
    (site.shared / "el9.qcow2").symlink_to("el9.qcow2")


def raw_as_qcow2(site: Site) -> None:
    target = site.shared / "el9-raw.qcow2"
    target.write_bytes(b"\0" * 65536)
    site.point("el9", target)


def bad_sha(site: Site) -> None:
    (site.shared / "el9-v1.qcow2.sha256").write_text("0" * 64 + "  el9-v1.qcow2\n")


def garbage_sha(site: Site) -> None:
    (site.shared / "el9-v1.qcow2.sha256").write_text("not a digest\n")


def backing(site: Site) -> None:
    child = site.shared / "el9-child.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(site.shared / "sl7-v1.qcow2"), "-F", "qcow2", str(child)],
        check=True,
    )
    site.point("el9", child)


def cache_symlink(site: Site) -> tuple[list[str], dict[str, str]]:
    real = site.root / "real-cache"
    site.cache.rename(real)
    site.cache.symlink_to(real)
    return ["fetch", "sl7"], {}


def cache_writable(site: Site) -> tuple[list[str], dict[str, str]]:
    site.cache.chmod(0o777)
    return ["fetch", "sl7"], {}


def world_writable_config(site: Site) -> tuple[list[str], dict[str, str]]:
    site.config_path.chmod(0o666)
    return ["fetch", "sl7"], {}


def foreign_config(site: Site) -> tuple[list[str], dict[str, str]]:
    os.chown(site.config_path, 65534, 65534)
    return ["fetch", "sl7"], {}


def symlinked_config(site: Site) -> tuple[list[str], dict[str, str]]:
    link = site.root / "etc" / "link.yaml"
    link.symlink_to(site.config_path)
    return ["--config", str(link), "fetch", "sl7"], {}


def condor_ad(text: str) -> Callable[[Site], tuple[list[str], dict[str, str]]]:
    def prepare(site: Site) -> tuple[list[str], dict[str, str]]:
        ad = site.root / "job.ad"
        ad.write_bytes(text.encode())
        return ["prolog", "--lrms", "htcondor"], {"_CONDOR_JOB_AD": str(ad)}

    return prepare


CASES = [
    Case("malformed YAML", config_text("images: {sl7: {master: SHARED/sl7.qcow2}\n"), 78, "fix the YAML syntax"),
    Case("YAML that is a list", config_text("- a\n- b\n"), 78, "must be a mapping"),
    Case(
        "unknown top-level key",
        config_text("cache_dir: CACHE\nimages: {sl7: {master: /x}}\nimagez: {}\n"),
        78,
        "imagez: unknown key",
    ),
    Case(
        "unknown image key",
        config_text("cache_dir: CACHE\nimages: {sl7: {master: /x, fromat: raw}}\n"),
        78,
        "images.sl7.fromat: unknown key",
    ),
    Case(
        "format of the wrong type",
        config_text("cache_dir: CACHE\nimages: {sl7: {master: /x, format: 3}}\n"),
        78,
        "images.sl7.format: wanted qcow2 or raw",
    ),
    Case(
        "lock_timeout not a number",
        config_text("cache_dir: CACHE\nlock_timeout: soon\nimages: {sl7: {master: /x}}\n"),
        78,
        "lock_timeout: wanted a number",
    ),
    Case(
        "cache_max_bytes a list",
        config_text("cache_dir: CACHE\ncache_max_bytes: [1]\nimages: {sl7: {master: /x}}\n"),
        78,
        "cache_max_bytes: wanted a size",
    ),
    Case(
        "rules not a list",
        config_text("cache_dir: CACHE\nimages: {sl7: {master: /x}}\nrules: {a: b}\n"),
        78,
        "rules: wanted a list",
    ),
    Case(
        "rule with an undefined image",
        config_text("cache_dir: CACHE\nimages: {sl7: {master: /x}}\nrules: [{match: {queue: a}, image: nope}]\n"),
        78,
        "rules[1].image: names an undefined image",
    ),
    Case(
        "unusable regex",
        config_text(
            "cache_dir: CACHE\nimages: {sl7: {master: /x}}\nrules: [{match: {user: 're:[z-a]'}, image: sl7}]\n"
        ),
        78,
        "unusable regex",
    ),
    Case(
        "unusable nodeset",
        config_text("cache_dir: CACHE\nimages: {sl7: {master: /x}}\nhostgroups: {g: 'n[1-'}\n"),
        78,
        "not a valid nodeset",
    ),
    Case(
        "vcpus out of range",
        config_text("cache_dir: CACHE\nimages: {sl7: {master: /x, vcpus: 0}}\n"),
        78,
        "images.sl7.vcpus: wanted a whole number",
    ),
    Case(
        "image named ../x in the config",
        config_text("cache_dir: CACHE\nimages: {'../x': {master: /x}}\n"),
        78,
        "image names are",
    ),
    Case(
        "image named with / in the config",
        config_text("cache_dir: CACHE\nimages: {'a/b': {master: /x}}\n"),
        78,
        "image names are",
    ),
    Case(
        "relative cache_dir",
        config_text("cache_dir: cache\nimages: {sl7: {master: /x}}\n"),
        78,
        "cache_dir: wanted an absolute path",
    ),
    Case("world-writable config", world_writable_config, 78, "writable by group or others"),
    Case("config owned by another user", foreign_config, 78, "owned by uid 65534"),
    Case("config that is a symlink", symlinked_config, 78, "is a symlink"),
    Case("fetch of ../sl7", command("fetch", "../sl7"), 65, "is not configured"),
    Case("fetch of /etc/passwd", command("fetch", "/etc/passwd"), 65, "is not configured"),
    Case("image request with ../", command("select", WNODES_IMAGE="../../etc/shadow"), 65, "not allowed by rule"),
    Case("image request with a newline", command("select", WNODES_IMAGE="el9\nsl7"), 65, "not allowed by rule"),
    Case(
        "image request with shell metacharacters",
        command("select", WNODES_IMAGE="el9;reboot"),
        65,
        "not allowed by rule",
    ),
    Case("job id with a newline", command("prolog", SLURM_JOB_ID="12\n13"), 65, "is not usable"),
    Case("job id with XML", command("prolog", "--job", "<domain type='kvm'/>"), 65, "is not usable"),
    Case("job id with shell metacharacters", command("prolog", "--job", "1;rm -rf /"), 65, "is not usable"),
    Case("job id ../../etc", command("snapshot", "sl7", "--job", "../../etc"), 65, "is not usable"),
    Case(
        "NUL bytes in a job ad",
        condor_ad('ClusterId = 1\x00; reboot\nProcId = 0\nOwner = "root"\n'),
        65,
        "is not usable",
    ),
    Case("unknown LRMS", command("select", "--lrms", "moab"), 64, "Invalid value for '--lrms'"),
    Case("PBS prologue without its arguments", command("select", "--lrms", "pbs"), 64, "pass them on"),
    Case("start before snapshot", command("start", "--job", "never"), 66, "has no snapshot"),
    Case("dangling master symlink", with_master(dangling), 69, "master of image 'el9' is missing"),
    Case("master that is a FIFO", with_master(fifo), 69, "is not a regular file"),
    Case("master that is a directory", with_master(directory), 69, "is not a regular file"),
    Case("master symlink loop", with_master(loop), 69, "master of image 'el9'"),
    Case("master in another format", with_master(raw_as_qcow2), 74, "is raw, but the config says qcow2"),
    Case("sha256 mismatch", with_master(bad_sha), 74, "sha256"),
    Case("sha256 file that is not a digest", with_master(garbage_sha), 74, "does not hold a sha256"),
    Case("master with a backing file", with_master(backing), 74, "has a backing file"),
    Case("cache directory replaced by a symlink", cache_symlink, 77, "is a symlink"),
    Case("cache directory writable by others", cache_writable, 77, "writable by others"),
]


@pytest.fixture
def baseline(site: Site) -> Site:
    site.make_master("sl7", "v1", size_mb=4, data=b"sl7")
    site.make_master("el9", "v1", size_mb=4, data=b"el9")
    site.write_config(
        rules=[{"match": {"env": {"WNODES_IMAGE": "*"}}, "image_from_env": "WNODES_IMAGE", "allow": ["el9"]}],
        default_image="sl7",
    )
    site.ok("fetch", "sl7")
    site.ok("fetch", "el9")
    return site


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(baseline: Site, case: Case, reliability: list[dict[str, object]]) -> None:
    if case.prepare is foreign_config and not is_root():
        pytest.skip("needs root to chown")
    args, env = case.prepare(baseline)
    cache = baseline.cache.resolve()
    before = tree_state(cache)
    r = baseline.run(*args, env=baseline.env(**env))
    assert r.code == case.code, f"{case.name}: exit {r.code}, stderr: {r.err}"
    assert len(r.err_lines) == 1, f"{case.name}: not one line: {r.err!r}"
    assert case.says in r.err, f"{case.name}: {r.err!r}"
    assert "Traceback" not in r.err
    assert tree_state(cache) == before, f"{case.name}: the cache changed"
    reliability.append({"case": "bad input", "name": case.name, "code": r.code, "error": r.err_lines[0], "lost": 0})


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert Path(__file__).exists()
