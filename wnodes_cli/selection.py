"""Choose a job's image from the admin's rules.

Rules are tried in order and the first match wins. A rule matches when every
condition in its ``match`` holds. The only way the job itself can influence
the choice is ``image_from_env``, and then only among the names the rule's
``allow`` lists: the job's value is compared with those names and never used
as a name itself.
"""

from __future__ import annotations

from typing import NamedTuple

from wnodes_cli.config import Config, Match, Rule
from wnodes_cli.errors import JobError, show
from wnodes_cli.jobinfo import JobFacts


class Verdict(NamedTuple):
    rule: Rule | None
    matched: bool
    reason: str


class Selection(NamedTuple):
    image: str
    rule: int | str  # 1-based rule index, or "default"
    reason: str
    verdicts: tuple[Verdict, ...]

    def as_json(self) -> dict[str, object]:
        return {"image": self.image, "rule": self.rule, "reason": self.reason}


def _check(match: Match, facts: JobFacts, config: Config) -> tuple[bool, str]:
    """Return (matched, why) for one rule's conditions."""
    reasons = []
    for fact, patterns in match.strings.items():
        # feature and fqan are lists: the condition holds when any element matches.
        values = facts.features if fact == "feature" else facts.fqan if fact == "fqan" else (getattr(facts, fact),)
        present = [v for v in values if v is not None]
        if not present:
            return False, f"{fact} is unknown for this job"
        hit = next((p for p in patterns for v in present if p.matches(v)), None)
        if hit is None:
            wanted = ", ".join(p.text for p in patterns)
            return False, f"{fact} {show(' '.join(present))} is not {wanted}"
        reasons.append(f"{fact} matches {hit.text!r}")
    for fact, ranges in match.ints.items():
        value = getattr(facts, fact)
        if value is None:
            return False, f"{fact} is unknown for this job"
        hit_range = next((r for r in ranges if r.matches(value)), None)
        if hit_range is None:
            return False, f"{fact} {value} is not {', '.join(map(str, ranges))}"
        reasons.append(f"{fact} {value} in {hit_range}")
    if match.hostgroups:
        if not facts.host:
            return False, "host is unknown for this job"
        group = next((g for g in match.hostgroups if _in_group(facts.host, config.hostgroups[g])), None)
        if group is None:
            return False, f"host {show(facts.host)} is not in hostgroup {', '.join(match.hostgroups)}"
        reasons.append(f"host in hostgroup {group}")
    for var, pattern in match.env.items():
        value = facts.env.get(var)
        if value is None:
            return False, f"${var} is not set"
        if not pattern.matches(value):
            return False, f"${var} {show(value)} is not {pattern.text!r}"
        reasons.append(f"${var} matches {pattern.text!r}")
    return True, "; ".join(reasons) or "matches every job"


def _in_group(host: str, nodeset: str) -> bool:
    from ClusterShell.NodeSet import NodeSet

    # Slurm may hand us a fully qualified name; groups list short names.
    return host in NodeSet(nodeset) or host.split(".", 1)[0] in NodeSet(nodeset)


def _from_env(rule: Rule, facts: JobFacts) -> str:
    assert rule.image_from_env is not None
    asked = facts.env.get(rule.image_from_env, "")
    # Compare against the admin's list; the job's string is never used as a name.
    for allowed in rule.allow:
        if asked == allowed:
            return allowed
    raise JobError(
        f"image {show(asked)} requested through ${rule.image_from_env} is not allowed "
        f"by rule {rule.number} (allowed: {', '.join(rule.allow)}); ask the site to add it"
    )


def select(config: Config, facts: JobFacts, explain: bool = False) -> Selection:
    """Pick the image. With ``explain`` every rule is evaluated and reported."""
    facts = facts.with_names()
    verdicts: list[Verdict] = []
    chosen: Selection | None = None
    for rule in config.rules:
        matched, why = _check(rule.match, facts, config)
        verdicts.append(Verdict(rule, matched, why))
        if matched and chosen is None:
            image = rule.image if rule.image is not None else _from_env(rule, facts)
            source = f" (from ${rule.image_from_env})" if rule.image_from_env else ""
            chosen = Selection(image, rule.number, f"rule {rule.number}: {why}{source}", ())
            if not explain:
                break
    if chosen is None and config.default_image is not None:
        chosen = Selection(config.default_image, "default", "no rule matched; default_image", ())
    if chosen is None:
        job = f"job {show(facts.job_id)}" if facts.job_id else "this job"
        raise JobError(
            f"no rule in {config.path} matches {job} and there is no default_image; "
            f"run 'wnodes select --explain' to see why"
        )
    return Selection(chosen.image, chosen.rule, chosen.reason, tuple(verdicts))
