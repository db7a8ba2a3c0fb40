"""wnodes fetch: make sure a read-only local copy of an image exists; print its path."""

from __future__ import annotations

import sys

from wnodes_cli.cache import FetchResult, ImageCache
from wnodes_cli.config import Config
from wnodes_cli.output import emit_json, progress_bar


def run(config: Config, image: str, timeout: float | None, as_json: bool) -> FetchResult:
    progress = progress_bar if sys.stderr.isatty() else None
    result = ImageCache(config, timeout=timeout, progress=progress).fetch(image)
    if as_json:
        emit_json(result.as_json())
    else:
        sys.stdout.write(f"{result.path}\n")
    return result
