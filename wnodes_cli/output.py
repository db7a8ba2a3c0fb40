"""Printing results: JSON for scripts, aligned tables for people, a progress bar on a terminal."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO


def emit_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")


def table(rows: Sequence[Sequence[object]], header: Sequence[str], file: TextIO | None = None) -> None:
    out = file or sys.stdout
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def progress_bar(label: str, total: int) -> Callable[[int], None]:
    """A one-line bar on stderr, redrawn at most 10 times a second."""
    start = time.monotonic()
    state = {"done": 0, "drawn": 0.0}

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        finished = state["done"] >= total
        if not finished and now - state["drawn"] < 0.1:
            return
        state["drawn"] = now
        frac = state["done"] / total if total else 1.0
        bar = "#" * int(frac * 30)
        rate = state["done"] / max(now - start, 1e-6)
        sys.stderr.write(
            f"\r{label} [{bar:<30}] {frac * 100:5.1f}% {human(state['done'])}/{human(total)} {human(rate)}/s"
        )
        if finished:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return advance
