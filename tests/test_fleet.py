"""wnodes fleet: phased invalidate and prefetch through ClusterShell.

Two fleets: a real sshd on loopback whose addresses 127.0.0.2-4 are three
nodes, each with its own config and cache (sshd ``Match LocalAddress`` sets
WNODES_CONFIG); and 1000 simulated nodes through ClusterShell's local exec
worker, each with its own cache directory.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Site

pytestmark = pytest.mark.slow

NODES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def wnodes_cmd() -> str:
    venv = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv"))
    exe = venv / "bin" / "wnodes"
    return str(exe) if exe.exists() else f"{sys.executable} -m wnodes_cli"


def node_config(root: Path, node: str, master: Path) -> Path:
    d = root / "nodes" / node
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "wnodes.yaml"
    cfg.write_text(
        yaml.safe_dump({"cache_dir": str(d / "cache"), "images": {"sl7": {"master": str(master), "format": "raw"}}})
    )
    cfg.chmod(0o644)
    return cfg


class SSHFleet:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.options = (
            f"-p {port} -i {root / 'id'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"-o BatchMode=yes -o LogLevel=ERROR"
        )

    def cache(self, node: str) -> Path:
        return self.root / "nodes" / node / "cache"


@pytest.fixture
def ssh_fleet(site: Site) -> Iterator[SSHFleet]:
    root = Path(tempfile.mkdtemp(prefix="wnodes-ssh-", dir="/var/tmp"))
    root.chmod(0o755)
    master = site.shared / "sl7-v1.raw"
    master.write_bytes(os.urandom(1 << 20))
    for node in NODES:
        node_config(root, node, master)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "id")], check=True)
    shutil.copy(root / "id.pub", root / "authorized_keys")
    port = random.randint(20000, 40000)
    lines = [
        f"Port {port}",
        *(f"ListenAddress {n}" for n in NODES),
        f"HostKey {root / 'host_ed25519'}",
        f"PidFile {root / 'sshd.pid'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
    ]
    for node in NODES:
        lines += [f"Match LocalAddress {node}", f"    SetEnv WNODES_CONFIG={root / 'nodes' / node / 'wnodes.yaml'}"]
    (root / "sshd_config").write_text("\n".join(lines) + "\n")
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "start-sshd"), str(root), str(root / "sshd_config")],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"sshd could not be started by scripts/start-sshd: {r.stderr.strip()[-300:]}")
    try:
        yield SSHFleet(root, port)
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "start-sshd"), "--stop", str(root)])
        shutil.rmtree(root, ignore_errors=True)


def fleet(site: Site, *args: str) -> tuple[int, dict[str, object], str]:
    r = site.run("fleet", *args, "--json", "--command", wnodes_cmd())
    return r.code, (json.loads(r.out) if r.out.strip() else {}), r.err


def test_prefetch_and_invalidate_really_happen_on_each_node(site: Site, ssh_fleet: SSHFleet) -> None:
    nodes = ",".join(NODES)
    code, out, err = fleet(
        site, "prefetch", "sl7", "--nodes", nodes, "--batch", "2", "--ssh-options", ssh_fleet.options
    )
    assert code == 0, err
    assert out["batches"] == ["127.0.0.[2-3]", "127.0.0.4"]
    assert out["summary"] == {"ok": "127.0.0.[2-4]"}
    for node in NODES:
        assert (ssh_fleet.cache(node) / "images" / "sl7" / "current").is_symlink(), f"{node} fetched"
    code, out, err = fleet(site, "invalidate", "sl7", "--nodes", nodes, "--ssh-options", ssh_fleet.options)
    assert code == 0, err
    for node in NODES:
        assert not (ssh_fleet.cache(node) / "images" / "sl7" / "current").exists(), f"{node} invalidated"
        assert not list((ssh_fleet.cache(node) / "images" / "sl7").glob("*.raw"))


def test_failed_and_unreachable_nodes_are_reported(site: Site, ssh_fleet: SSHFleet) -> None:
    # 127.0.0.3's config goes bad; nothing listens on 127.0.0.9.
    (ssh_fleet.root / "nodes" / "127.0.0.3" / "wnodes.yaml").write_text("images: [broken\n")
    code, out, err = fleet(site, "prefetch", "sl7", "--nodes", "127.0.0.[2-3,9]", "--ssh-options", ssh_fleet.options)
    assert code == 69
    assert out["summary"] == {"ok": "127.0.0.2", "failed": "127.0.0.3", "unreachable": "127.0.0.9"}
    rows = {n["node"]: n for n in out["nodes"]}  # type: ignore[union-attr]
    assert "fix the YAML syntax" in rows["127.0.0.3"]["message"]
    assert rows["127.0.0.9"]["rc"] == 255 and rows["127.0.0.9"]["message"]
    assert "did not complete: failed 127.0.0.3, unreachable 127.0.0.9" in err
    # the human table and folded summary
    r = site.run(
        "fleet",
        "prefetch",
        "sl7",
        "--nodes",
        "127.0.0.[2-3,9]",
        "--ssh-options",
        ssh_fleet.options,
        "--command",
        wnodes_cmd(),
    )
    assert "failed: 127.0.0.3" in r.out and "unreachable: 127.0.0.9" in r.out


def test_max_failures_stops_the_rollout(site: Site, ssh_fleet: SSHFleet) -> None:
    code, out, _ = fleet(
        site,
        "invalidate",
        "sl7",
        "--nodes",
        "127.0.0.[7-9],127.0.0.2",
        "--batch",
        "1",
        "--max-failures",
        "2",
        "--ssh-options",
        ssh_fleet.options,
    )
    assert code == 69 and out["stopped"] is True
    # A nodeset is ordered (127.0.0.2 first): .2 ok, .7 and .8 unreachable -> stop; .9 never runs.
    assert out["summary"] == {"ok": "127.0.0.2", "unreachable": "127.0.0.[7-8]", "skipped": "127.0.0.9"}


def test_dry_run_shows_batches_and_groups_resolve(site: Site, tmp_path: Path) -> None:
    cfgdir = tmp_path / "clustershell"
    cfgdir.mkdir()
    (cfgdir / "groups.conf").write_text(
        f"[Main]\ndefault: local\n\n[local]\nmap: sed -n 's/^$GROUP:\\(.*\\)/\\1/p' "
        f"{cfgdir}/groups\nlist: sed -n 's/:.*//p' {cfgdir}/groups\n"
    )
    (cfgdir / "groups").write_text("rack1: wn[001-025]\n")
    env = site.env(CLUSTERSHELL_CFGDIR=str(cfgdir))
    r = site.run("fleet", "invalidate", "sl7", "--nodes", "@rack1", "--batch", "10", "--dry-run", env=env)
    assert r.code == 0, r.err
    assert r.out.splitlines() == ["batch 1/3: wn[001-010]", "batch 2/3: wn[011-020]", "batch 3/3: wn[021-025]"]
    assert site.run("fleet", "invalidate", "../x", "--nodes", "wn1", "--worker", "exec", "--command", "true").code == 64


def test_a_thousand_nodes_never_exceed_the_batch_bound(site: Site, tmp_path: Path) -> None:
    """1000 simulated nodes, each with its own cache, through ClusterShell's exec worker.

    Each node's command records when it starts and ends; the largest number of
    overlapping runs is the real concurrency, whatever ClusterShell believes.
    """
    root = Path(tempfile.mkdtemp(prefix="wnodes-fleet-", dir="/var/tmp"))
    try:
        master = site.shared / "sl7-v1.raw"
        master.write_bytes(b"\x01" * 65536)
        names = [f"n{i:04d}" for i in range(1, 1001)]
        for n in names:
            node_config(root, n, master)
        log = root / "spans.log"
        track = root / "track"
        track.write_text(
            "#!/bin/sh\n"
            f'node=$1; shift\necho "s $(date +%s%N)" >> {log}\n'
            f'WNODES_CONFIG={root}/nodes/$node/wnodes.yaml "$@"; rc=$?\n'
            f'echo "e $(date +%s%N)" >> {log}\nexit $rc\n'
        )
        track.chmod(0o755)
        batch = 50
        r = site.run(
            "fleet",
            "invalidate",
            "sl7",
            "--nodes",
            "n[0001-1000]",
            "--worker",
            "exec",
            "--batch",
            str(batch),
            "--json",
            "--command",
            f"{track} %h {wnodes_cmd()}",
            env=site.env(),
            # 1000 real wnodes processes, ~0.1 s of CPU each, on 2 cores: ~70 s alone.
            timeout=900,
        )
        assert r.code == 0, r.err[-2000:]
        out = json.loads(r.out)
        assert len(out["batches"]) == 20 and out["summary"] == {"ok": "n[0001-1000]"}
        events = sorted(
            (int(t), +1 if k == "s" else -1) for k, t in (line.split() for line in log.read_text().splitlines())
        )
        assert sum(1 for _, d in events if d > 0) == 1000
        running = peak = 0
        for _, d in events:
            running += d
            peak = max(peak, running)
        assert peak <= batch, f"{peak} nodes ran at once with --batch {batch}"
        assert peak > 1, "the nodes of a batch do run in parallel"
        assert all((root / "nodes" / n / "cache" / "locks").is_dir() for n in names), "each node's own cache"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_pause_spaces_the_batches(site: Site, tmp_path: Path) -> None:
    log = tmp_path / "starts"
    cmd = f"sh -c 'date +%%s%%N >> {log}; true' %h"
    r = site.run(
        "fleet",
        "invalidate",
        "sl7",
        "--nodes",
        "n[1-3]",
        "--worker",
        "exec",
        "--batch",
        "1",
        "--pause",
        "0.5",
        "--command",
        cmd,
    )
    assert r.code == 0, r.err
    starts = sorted(int(t) for t in log.read_text().split())
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(starts)]
    assert len(starts) == 3 and all(g >= 0.5 for g in gaps), gaps
    bad = site.run("fleet", "invalidate", "sl7", "--nodes", "n1", "--worker", "exec", "--command", "echo %s")
    assert bad.code == 64 and "cannot run" in bad.err
