"""Run ``wnodes invalidate`` or ``wnodes fetch`` across hypervisors, in phases.

An update is rolled out in batches of ``--batch`` nodes, ``--pause`` seconds
apart, so that the shared storage serves at most one batch's copies at a time
(docs/operations.md has the arithmetic). ClusterShell runs the commands: over
ssh, or with its local exec worker (``%h`` is the node's name) for tests and
single-host setups. Its ``fanout`` is set to the batch size as well, so the
bound holds even within a batch.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from wnodes_cli.config import NAME_RE
from wnodes_cli.errors import UsageError

Action = Literal["invalidate", "prefetch"]
Status = Literal["ok", "failed", "unreachable", "skipped"]

SSH_UNREACHABLE = 255  # what ssh exits with when it cannot connect or authenticate


class NodeResult(NamedTuple):
    node: str
    status: Status
    rc: int | None
    message: str
    batch: int

    def as_json(self) -> dict[str, object]:
        return self._asdict()


class Rollout(NamedTuple):
    action: Action
    image: str
    batches: list[str]
    results: list[NodeResult]
    stopped: bool  # --max-failures ended it early

    def folded(self) -> dict[str, str]:
        from ClusterShell.NodeSet import NodeSet

        out = {}
        for status in ("ok", "failed", "unreachable", "skipped"):
            nodes = [r.node for r in self.results if r.status == status]
            if nodes:
                out[status] = str(NodeSet.fromlist(nodes))
        return out

    @property
    def failures(self) -> int:
        return sum(r.status in ("failed", "unreachable") for r in self.results)

    def as_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "image": self.image,
            "batches": self.batches,
            "stopped": self.stopped,
            "summary": self.folded(),
            "nodes": [r.as_json() for r in self.results],
        }


def plan(nodes: str, batch: int) -> list[Any]:
    """Split a nodeset (``wn[001-400]``, ``@group``) into batches of at most ``batch`` nodes."""
    from ClusterShell.NodeSet import NodeSet, NodeSetException

    if batch < 1:
        raise UsageError("--batch must be at least 1")
    try:
        ns = NodeSet(nodes)
    except NodeSetException as exc:
        raise UsageError(f"--nodes {nodes!r} is not a nodeset: {exc}") from None
    if len(ns) == 0:
        raise UsageError(f"--nodes {nodes!r} names no node (an empty or unknown @group?)")
    names = list(ns)
    return [NodeSet.fromlist(names[i : i + batch]) for i in range(0, len(names), batch)]


def remote_command(action: Action, image: str, command: str) -> str:
    if not NAME_RE.match(image):
        raise UsageError(f"{image!r} is not an image name")
    verb = "invalidate" if action == "invalidate" else "fetch"
    return f"{command} {verb} {shlex.quote(image)}"


def rollout(
    action: Action,
    image: str,
    nodes: str,
    batch: int,
    pause: float,
    max_failures: int | None,
    command: str = "wnodes",
    worker: str = "ssh",
    timeout: float | None = None,
    connect_timeout: float = 10,
    ssh_options: str | None = None,
    on_batch: Callable[[int, str, list[NodeResult]], None] | None = None,
) -> Rollout:
    from ClusterShell.NodeSet import NodeSet
    from ClusterShell.Task import task_self
    from ClusterShell.Worker.Worker import WorkerError

    batches = plan(nodes, batch)
    cmd = remote_command(action, image, command)
    task = task_self()
    task.set_default("distant_workername", worker)
    task.set_default("stderr", True)
    task.set_info("fanout", batch)
    task.set_info("connect_timeout", connect_timeout)
    if ssh_options:
        task.set_info("ssh_options", ssh_options)
    results: list[NodeResult] = []
    stopped = False
    for i, part in enumerate(batches, start=1):
        if stopped:
            results += [NodeResult(n, "skipped", None, "not run: --max-failures reached", i) for n in part]
            continue
        try:
            task.shell(cmd, nodes=str(part), timeout=timeout, stdin=False)
            task.resume()  # runs this batch to completion; it also clears the last batch's results
        except WorkerError as exc:
            raise UsageError(f"--command {command!r} cannot run: {exc} (with --worker exec, %h is the node)") from None
        done = _collect(task, part, i, worker)
        results += done
        if on_batch:
            on_batch(i, str(part), done)
        if max_failures is not None and sum(r.status != "ok" for r in results) >= max_failures:
            stopped = i < len(batches)
        if not stopped and i < len(batches) and pause > 0:
            time.sleep(pause)
    order = {n: k for k, n in enumerate(NodeSet.fromlist([str(b) for b in batches]))}
    results.sort(key=lambda r: order.get(r.node, 0))
    return Rollout(action, image, [str(b) for b in batches], results, stopped)


def _collect(task: Any, part: Any, batch: int, worker: str) -> list[NodeResult]:
    errors: dict[str, str] = {}
    for buf, keys in task.iter_errors():
        lines = [line for line in bytes(buf).decode(errors="replace").splitlines() if line.strip()]
        for node in keys:
            errors[node] = lines[-1].strip() if lines else ""
    rcs: dict[str, int] = {}
    for rc, keys in task.iter_retcodes():
        for node in keys:
            rcs[node] = rc
    timed_out = set(task.iter_keys_timeout())
    out = []
    for node in part:
        msg = errors.get(node, "")
        if node in timed_out:
            out.append(NodeResult(node, "failed", None, "timed out", batch))
        elif node not in rcs:
            out.append(NodeResult(node, "unreachable", None, msg or "no answer", batch))
        elif rcs[node] == SSH_UNREACHABLE and worker == "ssh":
            out.append(NodeResult(node, "unreachable", rcs[node], msg or "ssh failed", batch))
        elif rcs[node] != 0:
            out.append(NodeResult(node, "failed", rcs[node], msg.removeprefix("wnodes: error: "), batch))
        else:
            out.append(NodeResult(node, "ok", 0, "", batch))
    return out
