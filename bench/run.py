"""wnodes benchmarks: each result is a ratio against the physical floor, measured in the same run.

    .venv/bin/python bench/run.py [--only NAME ...] [--repeat N] [--dir DIR] [--json FILE]

Benchmarks (see docs/performance.md for targets and the latest figures):

* cold_dense   cold fetch of a 1 GiB dense image vs `cp` (and vs `cp` + fsync)
* sparse       cold fetch of a 4 GiB raw image holding 64 MiB vs `cp --sparse=always`
* concurrent   16 concurrent cold fetches of one image vs one cold fetch
* hit          a cache hit vs `wnodes --version`
* warm_prolog  a prolog on a cached image, up to the domain running, vs
               `wnodes --version` + `qemu-img create` + `virsh create` of the same XML
* snapshot     `wnodes snapshot` of a 1 GiB and a 64 GiB (virtual size) image
* exec         `wnodes exec -- true` in a running VM whose agent is up, next to one raw
               guest-exec + guest-exec-status round trip through virsh

Runs are interleaved (floor, wnodes, floor, wnodes, ...) and the median is
taken, so that a noisy disk hurts both sides alike. Work files go under
--dir (default /var/tmp/wnodes-bench), which must be on a local disk.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
WNODES = [sys.executable, "-m", "wnodes_cli"]


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def sync_disk() -> None:
    """Let earlier writes drain so that one run's writeback is not billed to the next."""
    os.sync()
    time.sleep(0.5)


class Bench:
    def __init__(self, root: Path, repeat: int) -> None:
        self.root = root
        self.repeat = repeat
        self.shared = root / "shared"
        self.cache = root / "cache"
        self.etc = root / "etc"
        for d in (self.shared, self.etc):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        os.chmod(self.etc, 0o755)
        self.config = self.etc / "wnodes.yaml"
        self.env = {**os.environ, "WNODES_CONFIG": str(self.config), "WNODES_LOG": "stderr"}
        self.images: dict[str, str] = {}

    def master(self, name: str, size: int, make: Callable[[Path], None]) -> Path:
        target = self.shared / f"{name}-v1.raw"
        if not target.exists() or target.stat().st_size != size:
            make(target)
        link = self.shared / f"{name}.raw"
        if link.is_symlink():
            link.unlink()
        link.symlink_to(target.name)
        self.images[name] = str(link)
        self.write_config()
        return target

    def write_config(self) -> None:
        lines = [f"cache_dir: {self.cache}", "hostgroups: {gpu: 'wn-gpu[01-20]'}", "images:"]
        lines += [f"  {n}: {{master: {m}, format: raw}}" for n, m in self.images.items()]
        first = next(iter(self.images))
        lines += ["rules:", f"  - {{match: {{hostgroup: gpu}}, image: {first}}}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o644)

    def fetch(self, image: str) -> dict[str, object]:
        out = subprocess.run(
            [*WNODES, "fetch", image, "--json"], env=self.env, check=True, capture_output=True, text=True
        )
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def timed_fetch(self, image: str) -> tuple[float, dict[str, object]]:
        start = time.perf_counter()
        result = self.fetch(image)
        return time.perf_counter() - start, result

    def invalidate(self, image: str) -> None:
        subprocess.run([*WNODES, "invalidate", image], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def cold_dense(self) -> dict[str, object]:
        src = self.master("dense", GiB, make_dense)
        dst = self.root / "cp.out"
        cp, cp_sync, ours, inner = [], [], [], []
        for _ in range(self.repeat):
            self.invalidate("dense")
            dst.unlink(missing_ok=True)
            sync_disk()
            cp.append(timed(["cp", str(src), str(dst)]))
            dst.unlink()
            sync_disk()
            cp_sync.append(timed(["sh", "-c", f"cp {src} {dst} && sync {dst}"]))
            dst.unlink()
            sync_disk()
            wall, result = self.timed_fetch("dense")
            ours.append(wall)
            inner.append(float(result["seconds"]))  # type: ignore[arg-type]
        m_cp, m_sync, m_ours, m_inner = map(statistics.median, (cp, cp_sync, ours, inner))
        return {
            "cp_s": m_cp,
            "cp_fsync_s": m_sync,
            "wnodes_s": m_ours,
            "wnodes_inner_s": m_inner,
            "ratio_vs_cp": m_ours / m_cp,
            "ratio_vs_cp_fsync": m_ours / m_sync,
            "target": "<= 1.05 x cp",
        }

    def sparse(self) -> dict[str, object]:
        src = self.master("sparse", 4 * GiB, make_sparse)
        dst = self.root / "cp.out"
        cp, cp_sync, ours, inner = [], [], [], []
        cp_disk = our_disk = 0
        for _ in range(self.repeat):
            self.invalidate("sparse")
            dst.unlink(missing_ok=True)
            sync_disk()
            cp.append(timed(["cp", "--sparse=always", str(src), str(dst)]))
            cp_disk = dst.stat().st_blocks * 512
            dst.unlink()
            sync_disk()
            cp_sync.append(timed(["sh", "-c", f"cp --sparse=always {src} {dst} && sync {dst}"]))
            sync_disk()
            wall, result = self.timed_fetch("sparse")
            ours.append(wall)
            inner.append(float(result["seconds"]))  # type: ignore[arg-type]
            our_disk = Path(str(result["path"])).stat().st_blocks * 512
        data = 64 * MiB
        m_cp, m_sync, m_ours, m_inner = map(statistics.median, (cp, cp_sync, ours, inner))
        return {
            "cp_sparse_s": m_cp,
            "cp_sparse_fsync_s": m_sync,
            "wnodes_s": m_ours,
            "wnodes_inner_s": m_inner,
            "ratio_vs_cp_sparse": m_ours / m_cp,
            "ratio_vs_cp_sparse_fsync": m_ours / m_sync,
            "inner_vs_cp_sparse": m_inner / m_cp,
            "disk_bytes": our_disk,
            "cp_disk_bytes": cp_disk,
            "disk_vs_data": our_disk / data,
            "target": "<= 1.5 x cp --sparse=always, disk <= 1.1 x data",
        }

    def concurrent(self) -> dict[str, object]:
        out: dict[str, object] = {"target": "<= 1.2 x one cold fetch, master read once"}
        for gib in (1, 4):
            name = f"dense{gib}g" if gib > 1 else "dense"
            self.master(name, gib * GiB, lambda p, g=gib: make_dense(p, g * GiB))
            one, many, reads = [], [], []
            for _ in range(self.repeat):
                self.invalidate(name)
                sync_disk()
                one.append(timed([*WNODES, "fetch", name], env=self.env))
                self.invalidate(name)
                sync_disk()
                start = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        [*WNODES, "fetch", name, "--json"],
                        env=self.env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                    for _ in range(16)
                ]
                outs = [json.loads(p.communicate()[0]) for p in procs]
                many.append(time.perf_counter() - start)
                reads.append(sum(int(o["bytes_copied"]) for o in outs) / (gib * GiB))
            m_one, m_many = statistics.median(one), statistics.median(many)
            out.update(
                {
                    f"{gib}g_one_cold_s": m_one,
                    f"{gib}g_sixteen_s": m_many,
                    f"{gib}g_ratio": m_many / m_one,
                    f"{gib}g_master_reads": max(reads),
                }
            )
            self.invalidate(name)
        return out

    def hit(self) -> dict[str, object]:
        self.master("small", 16 * MiB, lambda p: make_dense(p, 16 * MiB))
        self.fetch("small")
        version, hits = [], []
        for _ in range(max(self.repeat, 1) * 10):
            version.append(timed([*WNODES, "--version"], env=self.env))
            hits.append(timed([*WNODES, "fetch", "small"], env=self.env))
        m_v, m_h = statistics.median(version), statistics.median(hits)
        return {"version_s": m_v, "hit_s": m_h, "ratio": m_h / m_v, "target": "<= 1.3 x wnodes --version"}

    # -- the VM lifecycle (needs libvirt and the test guest) ------------------------

    def _guest(self) -> Path:
        repo = Path(__file__).resolve().parent.parent
        subprocess.run(["bash", str(repo / "scripts" / "start-libvirt")], check=True)
        guest = self.root / "guest"
        guest.mkdir(exist_ok=True)
        guest.chmod(0o755)
        subprocess.run(["bash", str(repo / "scripts" / "build-guest"), str(guest), "benchvm"], check=True)
        return guest

    def _publish_benchvm(self, guest: Path) -> Path:
        """The bench guest's disk as the master of image benchvm; the master symlink."""
        target = self.shared / "benchvm-v1.qcow2"
        shutil.copyfile(guest / "benchvm.qcow2", target)
        link = self.shared / "benchvm.qcow2"
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
        return link

    def _vm_config(self, guest: Path, images: dict[str, str]) -> None:
        lines = [f"cache_dir: {self.cache}", "libvirt: {uri: 'qemu:///system', domain_type: qemu}", "images:"]
        for name, master in images.items():
            lines.append(
                f"  {name}: {{master: {master}, format: qcow2, memory_mb: 192, kernel: {guest}/vmlinuz, "
                f"initrd: {guest}/initrd.img, cmdline: 'console=ttyS0 panic=-1 wnodes.hold=30'}}"
            )
        lines.append(f"default_image: {next(iter(images))}")
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o644)

    def warm_prolog(self) -> dict[str, object]:
        guest = self._guest()
        link = self._publish_benchvm(guest)
        self._vm_config(guest, {"benchvm": str(link)})
        base = self.fetch("benchvm")["path"]
        uri = ["virsh", "-q", "-c", "qemu:///system"]
        ours, version, qimg, vcreate = [], [], [], []
        for i in range(max(self.repeat, 3) * 2):
            job = f"bench-{os.getpid()}-{i}"
            ours.append(timed([*WNODES, "prolog", "--job", job], env=self.env))
            xml = (self.cache / "run" / job / "domain.xml").read_text()
            subprocess.run([*WNODES, "epilog", "--job", job], env=self.env, check=True, stdout=subprocess.DEVNULL)
            # The floor: the same three things done by hand, with the same XML.
            floor_dir = self.cache / "run" / f"floor-{i}"
            floor_dir.mkdir(parents=True)
            overlay = floor_dir / "disk.qcow2"
            version.append(timed([*WNODES, "--version"], env=self.env))
            qimg.append(
                timed(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)])
            )
            floor_xml = floor_dir / "domain.xml"
            floor_xml.write_text(
                xml.replace(f"wnodes-{job}", f"floor-{job}").replace(str(self.cache / "run" / job), str(floor_dir))
            )
            vcreate.append(timed([*uri, "create", str(floor_xml)]))
            subprocess.run([*uri, "destroy", f"floor-{job}"], check=True, stdout=subprocess.DEVNULL)
            shutil.rmtree(floor_dir)
        m = statistics.median
        floor = m(version) + m(qimg) + m(vcreate)
        return {
            "wnodes_prolog_s": m(ours),
            "cli_startup_s": m(version),
            "qemu_img_create_s": m(qimg),
            "virsh_create_s": m(vcreate),
            "floor_s": floor,
            "ratio": m(ours) / floor,
            "target": "<= 1.2 x (CLI start-up + qemu-img create + virsh create)",
        }

    def snapshot(self) -> dict[str, object]:
        times: dict[int, list[float]] = {}
        for gib in (1, 64):
            target = self.shared / f"virt{gib}g-v1.qcow2"
            if not target.exists():
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), f"{gib}G"], check=True)
            link = self.shared / f"virt{gib}g.qcow2"
            link.unlink(missing_ok=True)
            link.symlink_to(target.name)
        guest = self.root / "guest"
        guest.mkdir(exist_ok=True)
        self._vm_config(guest, {f"virt{g}g": str(self.shared / f"virt{g}g.qcow2") for g in (1, 64)})
        for gib in (1, 64):
            self.fetch(f"virt{gib}g")
        for i in range(max(self.repeat, 3) * 3):
            for gib in (1, 64):
                job = f"snap-{os.getpid()}-{gib}-{i}"
                times.setdefault(gib, []).append(
                    timed([*WNODES, "snapshot", f"virt{gib}g", "--job", job], env=self.env)
                )
                subprocess.run([*WNODES, "stop", "--job", job], env=self.env, check=True, stdout=subprocess.DEVNULL)
        one, big = statistics.median(times[1]), statistics.median(times[64])
        return {"1g_s": one, "64g_s": big, "ratio": big / one, "target": "within 10% of each other"}

    def exec(self) -> dict[str, object]:
        guest = self._guest()
        link = self._publish_benchvm(guest)
        self.config.write_text(
            f"cache_dir: {self.cache}\nlibvirt: {{domain_type: qemu}}\ndefault_image: benchvm\nimages:\n"
            f"  benchvm: {{master: {link}, memory_mb: 192, kernel: {guest}/vmlinuz, initrd: {guest}/initrd.img, "
            f"cmdline: 'console=ttyS0 panic=-1 wnodes.agent=1', guest_agent: true, virtiofs: true}}\n"
        )
        self.config.chmod(0o644)
        job = f"benchx-{os.getpid()}"
        subprocess.run([*WNODES, "prolog", "--job", job], env=self.env, check=True, stdout=subprocess.DEVNULL)
        try:
            subprocess.run([*WNODES, "exec", "--job", job, "--", "true"], env=self.env, check=True)  # agent up
            virsh = ["virsh", "-q", "-c", "qemu:///system", "qemu-agent-command", f"wnodes-{job}"]
            ours, raw = [], []
            for _ in range(max(self.repeat, 3) * 5):
                ours.append(timed([*WNODES, "exec", "--job", job, "--", "true"], env=self.env))
                start = time.perf_counter()
                out = subprocess.run(
                    [*virsh, '{"execute":"guest-exec","arguments":{"path":"/bin/true"}}'],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                pid = json.loads(out)["return"]["pid"]
                subprocess.run(
                    [*virsh, json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}})],
                    capture_output=True,
                    check=True,
                )
                raw.append(time.perf_counter() - start)
        finally:
            subprocess.run([*WNODES, "epilog", "--job", job], env=self.env, stdout=subprocess.DEVNULL)
        m = statistics.median
        return {
            "wnodes_exec_true_s": m(ours),
            "max_s": max(ours),
            "raw_agent_round_trip_s": m(raw),
            "target": "<= 0.3 s added to a trivial payload",
        }


def make_dense(path: Path, size: int = GiB) -> None:
    rng = random.Random(1)
    block = rng.randbytes(4 * MiB)
    with open(path, "wb") as fh:
        for i in range(size // (4 * MiB)):
            fh.write(block[i % 7 :] + block[: i % 7])


def make_sparse(path: Path) -> None:
    rng = random.Random(2)
    with open(path, "wb") as fh:
        fh.truncate(4 * GiB)
        for _ in range(64):
            fh.seek(rng.randrange(0, 4 * GiB // MiB) * MiB)
            fh.write(rng.randbytes(MiB))


ALL = ["cold_dense", "sparse", "concurrent", "hit", "warm_prolog", "snapshot", "exec"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=ALL, default=ALL)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp/wnodes-bench"))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    # Measure the package as installed: pip byte-compiles it (an editable
    # install under PYTHONDONTWRITEBYTECODE would recompile every run).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(__file__).parent.parent / "wnodes_cli")], check=True
    )
    bench = Bench(args.dir, args.repeat)
    results: dict[str, dict[str, object]] = {}
    for name in args.only:
        results[name] = getattr(bench, name)()
        print(f"{name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in results[name].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    shutil.rmtree(args.dir / "cache", ignore_errors=True)
    return 0


def _fmt(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
