"""The synthetic audience is planned by its seed: the same seed, the same people doing the same things."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from orchestrator.rehearsal import plan_actions
from orchestrator.validate import check

SPRING = Path(__file__).resolve().parents[2] / "playbooks" / "spring-reactivation.yaml"


def test_the_same_seed_plans_the_same_audience_and_variants_convert_differently() -> None:
    loaded, _ = check(SPRING)
    assert loaded is not None
    codes = {(g.id, v.id): f"{g.id}{v.id}" for g in loaded.guides for v in loaded.playbook.path.poster.variants}
    start = loaded.playbook.path.live.start.replace(tzinfo=loaded.playbook.tz)
    one, again, other = (plan_actions(loaded, start, codes, seed) for seed in (7, 7, 8))
    assert [(a.at, a.kind, a.person, a.data) for a in one] == [(a.at, a.kind, a.person, a.data) for a in again]
    assert [(a.kind, a.person) for a in one] != [(a.kind, a.person) for a in other]
    kinds = Counter(a.kind for a in one)
    assert 1400 < kinds["scan"] <= 1500 and 0 < kinds["join"] < kinds["scan"] and kinds["comment"] > 0 and kinds["deposit"] > 0
    assert all(a.at >= b.at for a, b in zip(one[1:], one)), "in time order"
    by_variant = Counter(a.data["code"][-1] for a in one if a.kind == "scan")
    joined = {a.person for a in one if a.kind == "join"}
    rate = {v: sum(1 for a in one if a.kind == "scan" and a.data["code"].endswith(v) and a.person in joined) / n for v, n in by_variant.items()}
    assert rate["A"] > rate["B"], "the first hook converts better, so the board's A/B has something to show"
    live = loaded.playbook.path.live
    comments = [a for a in one if a.kind == "comment"]
    assert all(live.start.replace(tzinfo=loaded.playbook.tz) <= a.at <= live.end.replace(tzinfo=loaded.playbook.tz) for a in comments)
    assert any("焕新" in a.data["text"] for a in comments) and any("焕新" not in a.data["text"] for a in comments)
    optouts = [a for a in one if a.kind == "optout"]
    assert len(optouts) == round(len(loaded.members) * 0.02) > 0 and {a.person for a in optouts} <= set(loaded.members)
    assert all(a.at < live.start.replace(tzinfo=loaded.playbook.tz) for a in optouts), "before the live, so reminders skip them"

