"""wnodes publish: versioned masters on "shared storage", atomic flips, --keep, --rollback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Site, sha256


def image_file(site: Site, name: str, mb: int, fmt: str = "qcow2") -> Path:
    p = site.root / f"{name}.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(p), f"{mb}M"], check=True)
    return p


@pytest.fixture
def pub_site(site: Site) -> Site:
    site.images["sl7"] = {"master": str(site.shared / "sl7.qcow2"), "format": "qcow2"}
    site.write_config()
    return site


def test_publish_flips_the_master_and_fetch_follows(pub_site: Site) -> None:
    v1, v2 = image_file(pub_site, "v1", 8), image_file(pub_site, "v2", 16)
    first = pub_site.ok("publish", "sl7", str(v1), "--json").json()
    assert first["old"] is None and first["new"].startswith("sl7-") and first["new"].endswith(".qcow2")
    master = pub_site.shared / "sl7.qcow2"
    assert master.is_symlink() and os.readlink(master) == first["new"]
    target = pub_site.shared / first["new"]
    assert sha256(target) == sha256(v1) == first["sha256"]
    assert (pub_site.shared / f"{first['new']}.sha256").read_text().split()[0] == first["sha256"]
    assert target.stat().st_mode & 0o777 == 0o444
    p1 = pub_site.ok("fetch", "sl7").out.strip()

    out = pub_site.ok("publish", "sl7", str(v2)).out
    second = os.readlink(master)
    assert out == f"sl7: {first['new']} → {second}\n"
    pub_site.ok("invalidate", "sl7")
    p2 = pub_site.ok("fetch", "sl7", "--json").json()
    assert p2["path"] != p1 and sha256(Path(p2["path"])) == sha256(v2), "the next job gets the new master"


def test_the_master_never_dangles_or_points_at_a_partial_file(pub_site: Site) -> None:
    images = [image_file(pub_site, f"v{i}", 4 + 4 * i) for i in range(4)]
    sizes = {p.stat().st_size for p in images}
    pub_site.ok("publish", "sl7", str(images[0]))
    master = pub_site.shared / "sl7.qcow2"
    # A reader that checks, as fast as it can, what a node's fetch would see.
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import os, sys
bad = 0; seen = 0
sizes = {sorted(sizes)!r}
while not os.path.exists({str(pub_site.root / "stop")!r}):
    t = os.path.realpath({str(master)!r})
    try:
        st = os.stat(t)
        side = open(t + '.sha256').read().split()[0]
    except OSError:
        bad += 1; continue
    seen += 1
    if st.st_size not in sizes or len(side) != 64 or st.st_mode & 0o777 != 0o444:
        bad += 1
print(seen, bad)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    for img in images[1:] * 3:
        pub_site.ok("publish", "sl7", str(img))
    (pub_site.root / "stop").touch()
    seen, bad = map(int, watcher.communicate(timeout=30)[0].split())
    assert seen > 100 and bad == 0, f"{bad} of {seen} observations saw a dangling or partial master"


def test_keep_and_rollback(pub_site: Site) -> None:
    files = [image_file(pub_site, f"k{i}", 4 + i) for i in range(5)]
    names = []
    for f in files:
        names.append(pub_site.ok("publish", "sl7", str(f), "--json").json()["new"])
    master = pub_site.shared / "sl7.qcow2"
    assert len(set(names)) == 5, "two publishes in one second still get distinct names"
    back = pub_site.ok("publish", "--rollback", "sl7", "--json").json()
    assert (back["old"], back["new"]) == (names[4], names[3]) and os.readlink(master) == names[3]
    # --keep counts old versions besides the current one, and never removes the current one
    again = pub_site.ok("publish", "sl7", str(files[0]), "--keep", "1", "--json").json()
    left = sorted(p.name for p in pub_site.shared.glob("sl7-*.qcow2"))
    assert left == sorted([again["new"], names[4]]), "the newest old version is kept"
    assert sorted(again["removed"]) == sorted(names[:4])
    assert not list(pub_site.shared.glob(f"{names[0]}.sha256"))
    pub_site.ok("publish", "--rollback", "sl7")
    r = pub_site.run("publish", "--rollback", "sl7")
    assert r.code == 66 and "nothing to roll back to" in r.err
    assert os.path.exists(os.path.realpath(master))


def test_publish_refuses_a_wrong_format_or_a_backing_file(pub_site: Site) -> None:
    raw = image_file(pub_site, "raw", 4, fmt="raw")
    r = pub_site.run("publish", "sl7", str(raw))
    assert r.code == 64 and "is raw, but image 'sl7' is qcow2" in r.err
    base = image_file(pub_site, "base", 4)
    child = pub_site.root / "child.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(child)], check=True)
    r = pub_site.run("publish", "sl7", str(child))
    assert r.code == 64 and "flatten it first" in r.err
    assert list(pub_site.shared.iterdir()) == [], "nothing was published"
    assert pub_site.run("publish", "sl7").code == 64
