"""The image cache, exercised through real wnodes processes and real qemu-img."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Site, needs_root, sha256, tree_state

MiB = 1 << 20


def dense(path: Path, size: int, seed: int = 1) -> Path:
    """A file with no zero blocks, so that its copy has exactly `size` bytes of data."""
    block = bytes((i * 7 + seed) % 251 + 1 for i in range(MiB))
    with open(path, "wb") as fh:
        for i in range(size // MiB):
            fh.write(block[i % 97 :] + block[: i % 97])
    return path


def publish(site: Site, name: str, version: str, size: int = 4 * MiB, fmt: str = "raw", sha: bool = False) -> Path:
    target = dense(site.shared / f"{name}-{version}.{fmt}", size, seed=hash(version) % 200)
    if sha:
        Path(str(target) + ".sha256").write_text(f"{sha256(target)}  {target.name}\n")
    site.point(name, target)
    site.images.setdefault(name, {"master": str(site.shared / f"{name}.{fmt}"), "format": fmt})
    return target


def versions(site: Site, image: str) -> list[Path]:
    d = site.cache / "images" / image
    return sorted(p for p in d.iterdir() if p.suffix in (".raw", ".qcow2")) if d.exists() else []


def overlay(site: Site, job: str, base: Path, fmt: str = "raw") -> Path:
    d = site.cache / "run" / job
    d.mkdir(parents=True, exist_ok=True)
    ov = d / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(ov)], check=True)
    return ov


def lease(site: Site, job: str, path: Path, image: str) -> Path:
    f = site.cache / "leases" / f"{job}.json"
    f.write_text(json.dumps({"job": job, "image": image, "path": str(path)}))
    return f


# -- basics --------------------------------------------------------------------


def test_cold_fetch_then_hit(site: Site) -> None:
    master = publish(site, "sl7", "v1")
    site.write_config()
    cold = site.ok("fetch", "sl7", "--json").json()
    assert set(cold) == {"image", "version", "path", "hit", "bytes_copied", "seconds", "waited_seconds"}
    assert cold["hit"] is False and cold["bytes_copied"] == 4 * MiB
    assert cold["version"].startswith("sl7-v1.raw@")
    path = Path(cold["path"])
    assert sha256(path) == sha256(master)
    assert path.stat().st_mode & 0o777 == 0o444
    warm = site.ok("fetch", "sl7", "--json").json()
    assert warm["hit"] is True and warm["path"] == cold["path"] and warm["bytes_copied"] == 0
    assert site.ok("fetch", "sl7").out == f"{path}\n"


def test_hit_makes_no_syscall_on_shared_storage(site: Site, tmp_path: Path) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    site.ok("fetch", "sl7")
    trace = tmp_path / "strace.log"
    r = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=%file,%desc", "-o", str(trace), *site.cmd("fetch", "sl7", "--json")],
        env=site.env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["hit"] is True
    touched = [line for line in trace.read_text().splitlines() if str(site.shared) in line]
    assert touched == [], f"a hit touched shared storage: {touched[:3]}"
    # And with the shared storage gone altogether, a hit still works.
    site.shared.rename(tmp_path / "unmounted")
    assert site.ok("fetch", "sl7", "--json").json()["hit"] is True


def test_raw_image_stays_sparse(site: Site) -> None:
    master = site.shared / "big-v1.raw"
    with open(master, "wb") as fh:
        fh.truncate(256 * MiB)
        fh.seek(100 * MiB)
        fh.write(b"\xab" * MiB)
    site.point("big", master)
    site.images["big"] = {"master": str(site.shared / "big.raw"), "format": "raw"}
    site.write_config()
    j = site.ok("fetch", "big", "--json").json()
    path = Path(j["path"])
    assert path.stat().st_size == 256 * MiB
    assert path.stat().st_blocks * 512 <= 1.1 * MiB + 64 * 1024
    assert j["bytes_copied"] == MiB
    assert sha256(path) == sha256(master)


def test_external_copy_command(site: Site) -> None:
    master = publish(site, "sl7", "v1")
    site.write_config(copy_command=["cp", "--sparse=always", "{src}", "{dst}"])
    j = site.ok("fetch", "sl7", "--json").json()
    assert sha256(Path(j["path"])) == sha256(master)


def test_failing_copy_command_leaves_nothing(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.write_config(copy_command=["false", "{src}", "{dst}"])
    r = site.run("fetch", "sl7")
    assert r.code == 74 and "copy_command for image 'sl7' failed" in r.err
    assert versions(site, "sl7") == [] and not list((site.cache / "images" / "sl7").glob(".part-*"))


# -- verification --------------------------------------------------------------


def test_sha256_is_verified(site: Site) -> None:
    publish(site, "sl7", "v1", sha=True)
    site.write_config()
    j = site.ok("fetch", "sl7", "--json").json()
    meta = json.loads(Path(j["path"] + ".json").read_text())
    assert meta["sha256"] == sha256(Path(j["path"]))


def test_sha256_mismatch_is_refused_and_leaves_nothing(site: Site) -> None:
    target = publish(site, "sl7", "v1")
    Path(str(target) + ".sha256").write_text("0" * 64 + "  x\n")
    site.write_config()
    r = site.run("fetch", "sl7")
    assert r.code == 74 and "sha256" in r.err and len(r.err_lines) == 1
    assert os.listdir(site.cache / "images" / "sl7") == []


def test_format_mismatch_is_refused(site: Site) -> None:
    site.make_master("sl7", "v1", size_mb=4)  # a qcow2 file...
    site.images["sl7"]["format"] = "raw"  # ...that the config calls raw
    site.write_config()
    r = site.run("fetch", "sl7")
    assert r.code == 74 and "is qcow2, but the config says raw" in r.err
    assert os.listdir(site.cache / "images" / "sl7") == []


def test_master_with_a_backing_file_is_refused(site: Site) -> None:
    base = site.make_master("base", "v1", size_mb=4)
    evil = site.shared / "sl7-v1.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(evil)], check=True)
    site.point("sl7", evil)
    site.images["sl7"] = {"master": str(site.shared / "sl7.qcow2"), "format": "qcow2"}
    site.write_config()
    r = site.run("fetch", "sl7")
    assert r.code == 74 and "backing file" in r.err


def test_dangling_master_is_a_node_error(site: Site) -> None:
    target = publish(site, "sl7", "v1")
    target.unlink()
    site.write_config()
    r = site.run("fetch", "sl7")
    assert r.code == 69 and "master of image 'sl7' is missing" in r.err and str(target) in r.err


# -- versions, refresh, invalidate --------------------------------------------


def test_new_master_is_used_after_invalidate_only(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    p1 = site.ok("fetch", "sl7").out.strip()
    v2 = publish(site, "sl7", "v2")
    assert site.ok("fetch", "sl7").out.strip() == p1, "refresh: never keeps the cached version"
    site.ok("invalidate", "sl7")
    assert not Path(p1).exists(), "an unused invalidated version is removed at once"
    p2 = site.ok("fetch", "sl7").out.strip()
    assert p2 != p1 and sha256(Path(p2)) == sha256(v2)


def test_refresh_on_change_follows_the_symlink(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.images["sl7"]["refresh"] = "on-change"
    site.write_config()
    p1 = site.ok("fetch", "sl7").out.strip()
    assert site.ok("fetch", "sl7", "--json").json()["hit"] is True
    v2 = publish(site, "sl7", "v2")
    j = site.ok("fetch", "sl7", "--json").json()
    assert j["hit"] is False and sha256(Path(j["path"])) == sha256(v2)
    assert not Path(p1).exists(), "the superseded, unused version is removed"


def test_invalidate_while_in_use(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    p1 = Path(site.ok("fetch", "sl7").out.strip())
    ov = overlay(site, "job1", p1)  # a real qcow2 overlay backed by the cached copy
    lease(site, "job2", p1, "sl7")
    before = sha256(p1)
    r = site.ok("invalidate", "sl7", "--json").json()
    assert r["versions"][0]["removed"] is False
    assert sorted(u.split(":")[0] for u in r["versions"][0]["users"]) == ["lease", "overlay"]
    assert p1.exists() and sha256(p1) == before
    # the next job gets a fresh copy, under another name
    p2 = Path(site.ok("fetch", "sl7").out.strip())
    assert p2 != p1 and p2.exists()
    rows = {row["path"]: row for row in site.ok("cache", "list", "--json").json()}
    assert rows[str(p1)]["invalidated"] and rows[str(p1)]["in_use"]
    assert rows[str(p2)]["current"] and not rows[str(p2)]["in_use"]
    # gc keeps it while either user remains
    site.ok("cache", "gc")
    assert p1.exists()
    ov.unlink()
    site.ok("cache", "gc")
    assert p1.exists(), "the lease still holds it"
    (site.cache / "leases" / "job2.json").unlink()
    gc = site.ok("cache", "gc", "--json").json()
    assert not p1.exists() and p2.exists()
    assert [e["reason"] for e in gc["entries"] if e["removed"]] == ["invalidated"]


def test_open_file_counts_as_in_use(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    p1 = site.ok("fetch", "sl7").out.strip()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"f=open({p1!r},'rb'); print('open', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        site.ok("invalidate", "sl7")
        assert Path(p1).exists()
        assert any(u.startswith("pid:") for u in site.ok("cache", "list", "--json").json()[0]["users"])
    finally:
        holder.kill()
        holder.wait()
    site.ok("cache", "gc")
    assert not Path(p1).exists()


def test_invalidate_all_and_usage_errors(site: Site) -> None:
    publish(site, "sl7", "v1")
    publish(site, "el9", "v1")
    site.write_config()
    site.ok("fetch", "sl7")
    site.ok("fetch", "el9")
    assert site.run("invalidate").code == 64
    assert site.run("invalidate", "sl7", "--all").code == 64
    assert site.run("invalidate", "sl7", "nope").code == 65
    assert len(versions(site, "sl7")) == 1, "a bad name in the list changes nothing"
    site.ok("invalidate", "--all")
    assert versions(site, "sl7") == versions(site, "el9") == []


# -- concurrency and crashes ---------------------------------------------------


@pytest.mark.slow
def test_16_concurrent_fetches_copy_once(site: Site) -> None:
    master = publish(site, "sl7", "v1", size=64 * MiB)
    site.write_config()
    procs = [site.popen("fetch", "sl7", "--json") for _ in range(16)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append((json.loads(out), err))
    copies = [j for j, _ in results if not j["hit"]]
    assert len(copies) == 1, "single flight: exactly one process copies"
    assert sum(j["bytes_copied"] for j, _ in results) == 64 * MiB, "the master is read once"
    assert {j["path"] for j, _ in results} == {copies[0]["path"]}
    waiters = [err for j, err in results if j["waited_seconds"] > 0.05]
    assert all("waiting for image sl7" in err for err in waiters)
    assert len(versions(site, "sl7")) == 1 and sha256(versions(site, "sl7")[0]) == sha256(master)


def test_different_images_copy_in_parallel(site: Site) -> None:
    publish(site, "a", "v1")
    publish(site, "b", "v1")
    site.write_config()
    pa, pb = site.popen("fetch", "a", "--json"), site.popen("fetch", "b", "--json")
    ja, jb = (json.loads(p.communicate()[0]) for p in (pa, pb))
    assert ja["waited_seconds"] < 0.05 and jb["waited_seconds"] < 0.05
    assert not ja["hit"] and not jb["hit"]


@pytest.mark.slow
def test_sigkill_mid_copy_then_next_fetch_is_correct(site: Site) -> None:
    master = publish(site, "sl7", "v1", size=256 * MiB)
    site.write_config()
    d = site.cache / "images" / "sl7"
    killed_mid_copy = 0
    for _attempt in range(8):
        p = site.popen("fetch", "sl7")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            parts = list(d.glob(".part-*")) if d.exists() else []
            if parts and parts[0].stat().st_size > 0:
                p.send_signal(signal.SIGKILL)
                killed_mid_copy += 1
                break
            time.sleep(0.001)
        p.wait()
        if killed_mid_copy:
            break
        site.ok("invalidate", "sl7")  # it finished first: start over
    assert killed_mid_copy, "could not catch the copy in flight"
    assert not (d / "current").exists(), "a killed copy is never made current"
    assert list(d.glob(".part-*")), "the killed copier left its temp file (as SIGKILL must)"
    j = site.ok("fetch", "sl7", "--json").json()
    assert j["hit"] is False
    assert sha256(Path(j["path"])) == sha256(master)
    assert not list(d.glob(".part-*")), "the next fetch cleared what the killed one left"


def test_lock_timeout_is_a_temporary_failure(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    site.ok("cache", "list")  # creates the layout
    lock = site.cache / "locks" / "sl7.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from filelock import FileLock; l=FileLock({str(lock)!r}); l.acquire(); "
            "print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        r = site.run("fetch", "sl7", "--timeout", "0.5")
        assert r.code == 75
        assert "waiting for image sl7" in r.err and "gave up waiting 0s for image 'sl7'" in r.err
    finally:
        holder.kill()
        holder.wait()
    assert site.ok("fetch", "sl7", "--timeout", "5", "--json").json()["hit"] is False


def test_crash_leftovers_are_collected(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    p1 = Path(site.ok("fetch", "sl7").out.strip())
    d = p1.parent
    (d / ".part-zombie.raw").write_bytes(b"half")
    (d / "deadbeef0000.1.raw.json").write_text("{}")  # metadata whose data never landed
    (d / "deadbeef0001.1.raw").write_bytes(b"x")  # data whose metadata never landed
    gc = site.ok("cache", "gc", "--json").json()
    assert sorted(Path(e["path"]).name for e in gc["entries"]) == ["deadbeef0000.1.raw.json", "deadbeef0001.1.raw"]
    assert sorted(os.listdir(d)) == sorted([p1.name, p1.name + ".json", "current"])


def test_cache_dir_replaced_by_a_symlink_is_refused(site: Site, tmp_path: Path) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site.cache.symlink_to(elsewhere)
    r = site.run("fetch", "sl7")
    assert r.code == 77 and "is a symlink" in r.err
    assert os.listdir(elsewhere) == []


# -- space -------------------------------------------------------------------


@needs_root
def test_refuses_when_free_space_is_short(site: Site) -> None:
    site.cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=755", "tmpfs", str(site.cache)], check=True)
    try:
        publish(site, "small", "v1", size=4 * MiB)
        publish(site, "big", "v1", size=32 * MiB)
        site.write_config()
        site.ok("fetch", "small")
        before = tree_state(site.cache)
        r = site.run("fetch", "big")
        assert r.code == 73, r.err
        assert len(r.err_lines) == 1 and "not enough space" in r.err and "needs 32.0 MiB" in r.err
        after = tree_state(site.cache)
        # Only the (empty) per-image dir and lock file may appear: both are reused, never data.
        assert {k: v for k, v in after.items() if not k.startswith(("images/big", "locks/big"))} == before
        assert not os.listdir(site.cache / "images" / "big")
        assert site.ok("fetch", "small", "--json").json()["hit"] is True
    finally:
        subprocess.run(["umount", str(site.cache)], check=True)


def test_eviction_is_least_recently_used_and_spares_what_is_in_use(site: Site) -> None:
    for name in "abcd":
        publish(site, name, "v1", size=MiB)
    site.write_config(cache_max_bytes=int(3.5 * MiB))
    paths = {n: Path(site.ok("fetch", n).out.strip()) for n in "abc"}
    site.ok("fetch", "a")  # a is now more recent than b and c
    paths["d"] = Path(site.ok("fetch", "d").out.strip())
    assert not paths["b"].exists(), "b was the least recently used"
    assert all(paths[n].exists() for n in "acd")
    lease(site, "job1", paths["c"], "c")  # c is now the LRU, but in use
    paths["b"] = Path(site.ok("fetch", "b").out.strip())
    assert paths["c"].exists(), "in use: never evicted"
    assert not paths["a"].exists(), "a was the least recently used of the unused ones"
    listed = {r["image"] for r in site.ok("cache", "list", "--json").json()}
    assert listed == {"b", "c", "d"}


def test_image_larger_than_the_cache_limit(site: Site) -> None:
    publish(site, "sl7", "v1", size=4 * MiB)
    site.write_config(cache_max_bytes="2MiB")
    r = site.run("fetch", "sl7")
    assert r.code == 73 and "cache_max_bytes is 2.0 MiB" in r.err


def test_gc_enforces_the_limit_and_removes_unconfigured_images(site: Site) -> None:
    for name in "abc":
        publish(site, name, "v1", size=MiB)
    site.write_config()
    for n in "abc":
        site.ok("fetch", n)
    del site.images["c"]
    site.write_config(cache_max_bytes=int(1.5 * MiB))
    dry = site.ok("cache", "gc", "--dry-run", "--json").json()
    assert {e["removed"] for e in dry["entries"]} == {False}
    assert len(versions(site, "c")) == 1
    gc = site.ok("cache", "gc", "--json").json()
    reasons = sorted(e["reason"] for e in gc["entries"] if e["removed"])
    assert reasons == ["evicted: over cache_max_bytes", "image no longer configured"]
    assert versions(site, "c") == [] and versions(site, "a") == [] and len(versions(site, "b")) == 1


def test_cache_list_human_output(site: Site) -> None:
    publish(site, "sl7", "v1")
    site.write_config()
    site.ok("fetch", "sl7")
    out = site.ok("cache", "list").out.splitlines()
    assert out[0].split()[:3] == ["image", "version", "state"]
    assert out[1].split()[0] == "sl7" and "current" in out[1]
    assert shutil.which("qemu-img")


@pytest.mark.parametrize("fmt", ["qed", "vmdk", "vdi", "vpc", "vhdx", "qcow2"])
def test_other_formats_posing_as_raw_are_refused(site: Site, fmt: str) -> None:
    """The in-process probe must recognise what the real qemu-img writes."""
    target = site.shared / f"sl7-v1.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(target), "4M"], check=True)
    link = site.shared / "sl7.img"
    link.symlink_to(target.name)
    site.images["sl7"] = {"master": str(link), "format": "raw"}
    site.write_config()
    r = site.run("fetch", "sl7")
    assert r.code == 74 and f"is {fmt}, but the config says raw" in r.err
