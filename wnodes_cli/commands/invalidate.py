"""wnodes invalidate: drop the local copy so the next job fetches the master afresh."""

from __future__ import annotations

import sys

from wnodes_cli.cache import ImageCache, Removal
from wnodes_cli.config import Config
from wnodes_cli.errors import UsageError
from wnodes_cli.output import emit_json, table


def run(config: Config, images: list[str], all_images: bool, timeout: float | None, as_json: bool) -> list[Removal]:
    if all_images == bool(images):
        raise UsageError("name the images to invalidate, or pass --all (not both)")
    cache = ImageCache(config, timeout=timeout)
    names = sorted(config.images) if all_images else images
    for name in names:
        config.image(name)  # every name is checked before anything is changed
    done: list[Removal] = []
    for name in names:
        done.extend(cache.invalidate(name))
    if as_json:
        emit_json({"invalidated": names, "versions": [r.as_json() for r in done]})
    else:
        for name in names:
            kept = [r for r in done if r.image == name and not r.removed]
            removed = [r for r in done if r.image == name and r.removed]
            sys.stdout.write(
                f"{name}: invalidated; next fetch copies the master afresh "
                f"({len(removed)} removed, {len(kept)} kept while in use)\n"
            )
        if any(not r.removed for r in done):
            table(
                [[r.image, r.path.name, ", ".join(r.users)] for r in done if not r.removed],
                ["image", "kept", "in use by"],
            )
    return done
