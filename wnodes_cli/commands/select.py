"""wnodes select: print the image the rules choose for this job."""

from __future__ import annotations

import sys

from wnodes_cli.config import Config
from wnodes_cli.jobinfo import JobFacts
from wnodes_cli.output import emit_json, table
from wnodes_cli.selection import Selection, select


def run(config: Config, facts: JobFacts, as_json: bool, explain: bool) -> Selection:
    chosen = select(config, facts, explain=explain)
    if explain:
        rows = [[v.rule.number if v.rule else "-", "match" if v.matched else "no", v.reason] for v in chosen.verdicts]
        rows.append(["default", "match" if chosen.rule == "default" else "-", config.default_image or "(none)"])
        # With --json, stdout is for the script: the explanation goes to stderr.
        table(rows, ["rule", "result", "why"], file=sys.stderr if as_json else sys.stdout)
    if as_json:
        emit_json(chosen.as_json())
    else:
        sys.stdout.write(chosen.image + "\n")
    return chosen
