"""wnodes cache list / wnodes cache gc."""

from __future__ import annotations

import sys
import time

from wnodes_cli.cache import ImageCache, Removal
from wnodes_cli.config import Config
from wnodes_cli.output import emit_json, human, table


def list_(config: Config, as_json: bool) -> list[dict[str, object]]:
    rows = ImageCache(config).listing()
    if as_json:
        emit_json(rows)
        return rows
    now = time.time()
    table(
        [
            [
                r["image"],
                r["version"],
                ("current" if r["current"] else "") + (" invalidated" if r["invalidated"] else ""),
                human(float(r["disk_bytes"])),  # type: ignore[arg-type]
                ", ".join(r["users"]) or "-",  # type: ignore[arg-type]
                f"{(now - float(r['last_used'])) / 60:.0f} min ago",  # type: ignore[arg-type]
                r["path"],
            ]
            for r in rows
        ],
        ["image", "version", "state", "disk", "in use by", "last used", "path"],
    )
    return rows


def gc(config: Config, dry_run: bool, timeout: float | None, as_json: bool) -> list[Removal]:
    from wnodes_cli.vm import Node

    # Leases of jobs whose domain vanished (a reboot, a lost epilog) go first,
    # so that the copies they held can be collected in the same run.
    node = Node(config, timeout=timeout)
    reaped = [] if dry_run else node.reap()
    if not dry_run:
        node.forget_consoles()
    done = ImageCache(config, timeout=timeout).gc(dry_run=dry_run)
    if as_json:
        emit_json({"dry_run": dry_run, "reaped_jobs": reaped, "entries": [r.as_json() for r in done]})
        return done
    for job in reaped:
        sys.stdout.write(f"released job {job}: its domain was gone for longer than lease_grace_seconds\n")
    if not done:
        sys.stdout.write("nothing to clean\n")
    else:
        verb = "would remove" if dry_run else "removed"
        table(
            [
                [verb if (r.removed or dry_run) and not r.users else "kept", r.image, r.path.name, r.reason]
                for r in done
            ],
            ["action", "image", "file", "why"],
        )
    return done
