"""The draws' proof: deterministic, unbiased, and checkable by the docs' standalone script."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

from orchestrator import drawproof

DOCS = Path(__file__).resolve().parents[2] / "docs" / "draws.md"
SEED = "5eed" * 16
RULES = {"screenshot_draw": {"winners_per_draw": 3, "screen_size": 20, "keyword": "焕新"}}


def bundle() -> dict[str, object]:
    entrants = [f"u{i:03d}" for i in range(40)]
    draws = []
    for n, hour in enumerate(("20:00", "21:00")):
        draw_id = f"screenshot:{hour}"
        chosen = entrants[n * 10:(n + 1) * 10 + 5]
        draws.append({"id": draw_id, "state": "done", "k": 3, "entrants": chosen, "entrant_hash": drawproof.entrant_hash(chosen),
                      "winners": drawproof.winners(SEED, draw_id, chosen, 3), "freeze_offset_ms": drawproof.freeze_offset_ms(SEED, draw_id)})
    draws.append({"id": "screenshot:22:00", "state": "void", "reason": "no comments", "k": 3, "entrants": [],
                  "entrant_hash": drawproof.entrant_hash([]), "winners": []})
    digest = drawproof.rules_hash(RULES)
    return {"rules": RULES, "rules_hash": digest, "commitment": drawproof.commitment(SEED, digest), "seed": SEED, "draws": draws}


def test_the_same_inputs_give_the_same_winners_and_any_change_changes_them() -> None:
    entrants = [f"user{i}" for i in range(50)]
    first = drawproof.winners(SEED, "screenshot:20:00", entrants, 3)
    assert first == drawproof.winners(SEED, "screenshot:20:00", list(reversed(entrants)), 3)  # order of arrival does not matter
    assert len(set(first)) == 3 and set(first) <= set(entrants)
    assert drawproof.winners("0" * 64, "screenshot:20:00", entrants, 3) != first
    assert drawproof.winners(SEED, "screenshot:21:00", entrants, 3) != first
    assert drawproof.winners(SEED, "screenshot:20:00", entrants[:-1] + ["someone-else"], 3) != first
    assert drawproof.winners(SEED, "screenshot:20:00", entrants, 3, beacon="drand:1234:abcd") != first
    assert sorted(drawproof.winners(SEED, "d", ["a", "b"], 5)) == ["a", "b"]  # fewer entrants than winners: all win
    assert drawproof.winners(SEED, "d", [], 3) == []
    assert 0 <= drawproof.freeze_offset_ms(SEED, "screenshot:20:00") < 60_000


def test_every_entrant_wins_as_often_as_chance_says() -> None:
    """Chi-square over 20,000 one-winner draws among 20 entrants: df 19, critical value 43.82 at
    p = 0.001; the seed is fixed, so the test is stable."""
    entrants = [f"e{i:02d}" for i in range(20)]
    wins = Counter(drawproof.winners(SEED, f"draw-{n}", entrants, 1)[0] for n in range(20_000))
    expected = 20_000 / 20
    chi2 = sum((wins[e] - expected) ** 2 / expected for e in entrants)
    assert chi2 < 43.82, chi2
    # and the second of three winners is as fair as the first
    second = Counter(drawproof.winners(SEED, f"d{n}", entrants, 3)[1] for n in range(20_000))
    assert sum((second[e] - expected) ** 2 / expected for e in entrants) < 43.82


def test_verify_says_match_and_names_what_was_tampered() -> None:
    good = bundle()
    assert drawproof.verify(good) == []
    swapped = copy.deepcopy(good)
    swapped["draws"][1]["winners"][0] = "u999"  # type: ignore[index]
    assert drawproof.verify(swapped) == [
        f"draws[1] (screenshot:21:00).winners: recomputed {good['draws'][1]['winners']}, the bundle says {swapped['draws'][1]['winners']}"]  # type: ignore[index]
    padded = copy.deepcopy(good)
    padded["draws"][0]["entrants"].append("u777")  # type: ignore[index]
    assert any(p.startswith("draws[0] (screenshot:20:00).entrant_hash") for p in drawproof.verify(padded))
    other_seed = copy.deepcopy(good) | {"seed": "1" * 64}
    assert any(p.startswith("commitment:") for p in drawproof.verify(other_seed))
    loosened = copy.deepcopy(good)
    loosened["rules"] = {"screenshot_draw": {**RULES["screenshot_draw"], "winners_per_draw": 5}}
    assert any(p.startswith("rules_hash:") for p in drawproof.verify(loosened))
    assert drawproof.verify({**good, "seed": None}) == ["seed: missing (the seed is revealed only when the event has closed)"]


def standalone(tmp_path: Path) -> Path:
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"<!-- verify-script:begin -->\n```python\n(.*?)```\n<!-- verify-script:end -->", text, re.S)
    assert found, "docs/draws.md lost its script"
    script = tmp_path / "check_draws.py"
    script.write_text(found.group(1), encoding="utf-8")
    return script


def test_the_standalone_script_in_the_docs_agrees(tmp_path: Path) -> None:
    script = standalone(tmp_path)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(bundle(), ensure_ascii=False), encoding="utf-8")
    tampered = bundle()
    tampered["draws"][0]["winners"] = list(reversed(tampered["draws"][0]["winners"]))  # type: ignore[index]
    bad.write_text(json.dumps(tampered, ensure_ascii=False), encoding="utf-8")
    ok = subprocess.run([sys.executable, str(script), str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.split("\n")[:4] == [
        "commitment match", "screenshot:20:00 match", "screenshot:21:00 match", "screenshot:22:00 match"]
    no = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True)
    assert no.returncode == 1 and "screenshot:20:00 MISMATCH" in no.stdout
    assert drawproof.verify(tampered) != []
