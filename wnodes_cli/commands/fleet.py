"""wnodes publish / wnodes fleet invalidate|prefetch."""

from __future__ import annotations

import sys
from pathlib import Path

from wnodes_cli.config import Config
from wnodes_cli.fleet import Action, NodeResult, Rollout, plan, rollout
from wnodes_cli.output import emit_json, table
from wnodes_cli.publish import Published
from wnodes_cli.publish import publish as do_publish
from wnodes_cli.publish import rollback as do_rollback


def publish(config: Config, image: str, source: str | None, keep: int | None, back: bool, as_json: bool) -> Published:
    from wnodes_cli.errors import UsageError

    if back == (source is not None):
        raise UsageError("give the new image FILE, or --rollback (not both)")
    done = do_rollback(config, image) if back else do_publish(config, image, Path(str(source)), keep)
    if as_json:
        emit_json(done.as_json())
    else:
        sys.stdout.write(f"{image}: {done.old or '(none)'} → {done.new}\n")
        for name in done.removed:
            sys.stdout.write(f"  removed old version {name}\n")
    return done


def fleet(
    action: Action,
    image: str,
    nodes: str,
    batch: int,
    pause: float,
    max_failures: int | None,
    dry_run: bool,
    command: str,
    worker: str,
    timeout: float | None,
    ssh_options: str | None,
    as_json: bool,
) -> Rollout | None:
    from wnodes_cli.errors import RolloutFailed

    if dry_run:
        batches = [str(b) for b in plan(nodes, batch)]
        if as_json:
            emit_json({"action": action, "image": image, "batches": batches, "dry_run": True})
        else:
            for i, b in enumerate(batches, start=1):
                sys.stdout.write(f"batch {i}/{len(batches)}: {b}\n")
        return None

    def progress(i: int, part: str, done: list[NodeResult]) -> None:
        if sys.stderr.isatty():
            ok = sum(r.status == "ok" for r in done)
            sys.stderr.write(f"batch {i}: {part}: {ok}/{len(done)} ok\n")

    result = rollout(
        action,
        image,
        nodes,
        batch,
        pause,
        max_failures,
        command,
        worker,
        timeout,
        ssh_options=ssh_options,
        on_batch=progress,
    )
    if as_json:
        emit_json(result.as_json())
    else:
        table([[r.node, r.status, r.message] for r in result.results], ["node", "status", "message"])
        for status, folded in result.folded().items():
            sys.stdout.write(f"{status}: {folded}\n")
        if result.stopped:
            sys.stdout.write(f"stopped: --max-failures {max_failures} reached\n")
    if result.failures or result.stopped:
        summary = result.folded()
        bad = ", ".join(f"{k} {summary[k]}" for k in ("failed", "unreachable", "skipped") if k in summary)
        raise RolloutFailed(f"{action} of {image} did not complete: {bad}; rerun on those nodes when fixed")
    return result
