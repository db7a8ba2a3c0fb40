"""Config loading: validation with key paths, unsafe files, where the file is found."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import Site, needs_root


@pytest.fixture
def base(site: Site) -> Site:
    site.make_master("sl7", "v1", size_mb=1)
    site.write_config(default_image="sl7")
    return site


def write(site: Site, text: str) -> None:
    site.config_path.write_text(text)
    site.config_path.chmod(0o644)


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("images: {sl7: {master: /x}}\ncache_dri: /tmp\n", "cache_dri: unknown key (known: cache_dir,"),
        ("images: {sl7: {master: /x, formt: raw}}\n", "images.sl7.formt: unknown key"),
        ("images: {sl7: {master: /x, format: vmdk}}\n", "images.sl7.format: wanted qcow2 or raw"),
        ("images: {sl7: {master: relative/path}}\n", "images.sl7.master: wanted an absolute path"),
        (
            "images: {sl7: {master: /x}}\nrules: [{match: {queue: a}, image: el9}]\n",
            "rules[1].image: names an undefined image",
        ),
        (
            "images: {sl7: {master: /x}}\nrules: [{match: {queue: 're:(unclosed'}, image: sl7}]\n",
            "rules[1].match.queue: unusable regex",
        ),
        (
            "images: {sl7: {master: /x}}\nrules: [{match: {uid: 'lots'}, image: sl7}]\n",
            "rules[1].match.uid: wanted a number",
        ),
        (
            "images: {sl7: {master: /x}}\nrules: [{match: {uid: '9-1'}, image: sl7}]\n",
            "rules[1].match.uid: wanted a number",
        ),
        (
            "images: {sl7: {master: /x}}\nrules: [{match: {hostgroup: gpu}, image: sl7}]\n",
            "rules[1].match.hostgroup: 'gpu' is not defined",
        ),
        ("images: {sl7: {master: /x}}\nrules: [{match: {quue: a}, image: sl7}]\n", "rules[1].match.quue: unknown key"),
        (
            "images: {sl7: {master: /x}}\nrules: [{match: {}, image: sl7, image_from_env: X, allow: [sl7]}]\n",
            "rules[1]: wanted exactly one of image or image_from_env",
        ),
        (
            "images: {sl7: {master: /x}}\nrules: [{image_from_env: X, allow: [el9]}]\n",
            "rules[1].allow: names undefined images",
        ),
        ("images: {sl7: {master: /x}}\nrules: {queue: cms}\n", "rules: wanted a list"),
        ("images: {sl7: {master: /x}}\ndefault_image: el9\n", "default_image: wanted one of the images"),
        ("images: {sl7: {master: /x}}\nhostgroups: {gpu: 'wn[01-'}\n", "hostgroups.gpu: not a valid nodeset"),
        ("images: {sl7: {master: /x}}\ncache_max_bytes: lots\n", "cache_max_bytes: wanted a size"),
        (
            "images: {sl7: {master: /x}}\ncopy_command: [cp, '{src}']\n",
            "copy_command: must contain both {src} and {dst}",
        ),
        ("images: {sl7: {master: /x}}\ncopy_command: 'cp {src} {dst}'\n", "copy_command: wanted a list of strings"),
        ("images: {sl7: {master: /x}}\nlock_timeout: soon\n", "lock_timeout: wanted a number of seconds"),
        ("images: {'../etc': {master: /x}}\n", "images.../etc: image names are"),
        ("images: {}\n", "images: wanted a mapping"),
        ("images: [sl7]\n", "images: wanted a mapping"),
        ("- just\n- a list\n", "must be a mapping of keys (cache_dir, images, ...), not a list"),
        ("images: {sl7: {master: /x}\n", "fix the YAML syntax"),
    ],
)
def test_invalid_config_names_file_key_and_fix(base: Site, yaml_text: str, expected: str) -> None:
    write(base, yaml_text)
    r = base.run("select")
    assert r.code == 78, r.err
    assert expected in r.err
    assert str(base.config_path) in r.err_lines[0]
    assert all(line.startswith("wnodes: error: ") for line in r.err_lines)


def test_every_problem_is_reported(base: Site) -> None:
    write(base, "images: {sl7: {master: rel, format: vmdk}}\nbogus: 1\n")
    r = base.run("select")
    assert r.code == 78
    assert len(r.err_lines) == 3  # bogus, master, format: one line each


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_writable_config_is_refused(base: Site, mode: int) -> None:
    base.config_path.chmod(mode)
    r = base.run("select")
    assert r.code == 78
    assert "writable by group or others" in r.err and "chmod go-w" in r.err


@needs_root
def test_config_owned_by_someone_else_is_refused(base: Site) -> None:
    os.chown(base.config_path, 65534, 65534)
    r = base.run("select")
    assert r.code == 78 and "owned by uid 65534" in r.err


def test_config_directory_writable_by_others_is_refused(base: Site) -> None:
    base.config_path.parent.chmod(0o777)
    r = base.run("select")
    assert r.code == 78 and "writable by others" in r.err


def test_symlinked_config_is_refused(base: Site, tmp_path: Path) -> None:
    link = tmp_path / "etc" / "link.yaml"
    link.symlink_to(base.config_path)
    r = base.run("--config", str(link), "select")
    assert r.code == 78 and "symlink" in r.err


def test_config_path_precedence(base: Site, tmp_path: Path) -> None:
    other = tmp_path / "etc" / "other.yaml"
    other.write_text(f"cache_dir: {base.cache}\nimages: {{el9: {{master: /x}}}}\ndefault_image: el9\n")
    other.chmod(0o644)
    assert base.ok("select").out == "sl7\n"  # $WNODES_CONFIG
    assert base.ok("--config", str(other), "select").out == "el9\n"  # --config wins
    env = base.env()
    del env["WNODES_CONFIG"]
    r = base.run("select", env=env)
    if not Path("/etc/wnodes/wnodes.yaml").exists():
        assert r.code == 78 and "/etc/wnodes/wnodes.yaml does not exist" in r.err


def test_sizes_and_percentages(base: Site) -> None:
    from wnodes_cli.config import parse_size

    assert parse_size("1G") == 1 << 30
    assert parse_size("512MiB") == 512 << 20
    assert parse_size(4096) == 4096
    assert parse_size("1.5K") == 1536
    assert parse_size("-1") is None and parse_size(True) is None
    base.write_config(cache_max_bytes="80%")
    base.ok("select")


def test_example_config_is_valid(tmp_path: Path) -> None:
    """examples/wnodes.yaml documents every key; it must load as it is."""
    from conftest import REPO

    from wnodes_cli import config

    example = tmp_path / "wnodes.yaml"
    example.write_text((REPO / "examples" / "wnodes.yaml").read_text())
    example.chmod(0o644)
    os.chmod(tmp_path, 0o755)
    cfg = config.load(str(example))
    assert cfg.default_image in cfg.images
    assert cfg.rules
