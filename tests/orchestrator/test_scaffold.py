"""`orchestrator init`: starter folders that validate as written and open cleanly in Excel."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import pytest

from orchestrator import OrchestratorError, Stage, check_playbook, plan, validate
from orchestrator.scaffold import TEMPLATES, live_date, scaffold

TODAY = date(2026, 11, 23)  # a Monday
LIVE = date(2026, 12, 12)  # the first Saturday at least 14 days later


@pytest.mark.parametrize(("today", "expected"), [
    (TODAY, LIVE),
    (date(2026, 11, 28), date(2026, 12, 12)),  # a Saturday: exactly two weeks on
    (date(2026, 11, 29), date(2026, 12, 19)),  # a Sunday: two weeks on is a Sunday, so the Saturday after
    (date(2026, 12, 25), date(2027, 1, 9)),  # across the new year
])
def test_the_live_is_on_a_saturday_at_least_two_weeks_away(today: date, expected: date) -> None:
    day = live_date(today)
    assert day == expected and day.weekday() == 5 and (day - today).days >= 14


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_a_fresh_folder_validates_and_plans(tmp_path: Path, template: str) -> None:
    target = tmp_path / "my-event"
    written = scaffold(target, template, today=TODAY)
    assert written[0] == target / "playbook.yaml"
    assert all(p.is_file() and p.is_relative_to(target) for p in written)
    assert {p.suffix for p in written} >= {".yaml", ".csv"}
    loaded, diags = check_playbook(written[0])
    assert loaded is not None, "\n".join(map(str, diags))
    errors = [d for d in diags + validate(loaded) if d.is_error]
    assert not errors, "\n".join(map(str, errors))
    assert loaded.members and loaded.guides
    p = plan(loaded)
    assert p.live_start.date() == LIVE
    assert any(s.stage is Stage.REMINDER for s in p.steps)
    assert any(s.stage is Stage.DRAW_SCREENSHOT for s in p.steps)
    assert loaded.playbook.id == "my-event"  # the folder's name


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_placeholders_are_all_filled(tmp_path: Path, template: str) -> None:
    for path in scaffold(tmp_path / "ev", template, today=TODAY):
        if path.suffix in (".yaml", ".csv", ".txt", ".html"):
            text = path.read_text(encoding="utf-8-sig")
            assert "@LIVE_DATE" not in text and "@EVENT_ID@" not in text, path
    assert f"start: {LIVE.isoformat()} " in (tmp_path / "ev" / "playbook.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_csv_templates_are_utf8_with_bom_and_have_sample_rows(tmp_path: Path, template: str) -> None:
    csvs = [p for p in scaffold(tmp_path / "ev", template, today=TODAY) if p.suffix == ".csv"]
    assert csvs
    for path in csvs:
        data = path.read_bytes()
        assert data.startswith(b"\xef\xbb\xbf"), path
        assert not data[3:].startswith(b"\xef\xbb\xbf"), path  # exactly one BOM
        rows = data.decode("utf-8-sig").splitlines()
        assert 4 <= len(rows) <= 11, path  # a header and 3-10 sample rows


def test_a_folder_name_that_is_not_an_id_gets_the_templates_id(tmp_path: Path) -> None:
    written = scaffold(tmp_path / "春季 直播", "spring", today=TODAY)
    loaded, diags = check_playbook(written[0])
    assert loaded is not None and loaded.playbook.id == "spring-live", diags


def test_refuses_a_folder_with_files_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    notes = target / "notes.txt"
    notes.write_text("keep me", encoding="utf-8")
    with pytest.raises(OrchestratorError, match="not empty") as info:
        scaffold(target, "spring", today=TODAY)
    assert str(target) in str(info.value)
    assert sorted(target.iterdir()) == [notes]  # nothing written
    written = scaffold(target, "spring", force=True, today=TODAY)
    assert (target / "playbook.yaml") in written and notes.read_text(encoding="utf-8") == "keep me"


def test_an_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    assert scaffold(tmp_path, "flash", today=TODAY)[0] == tmp_path / "playbook.yaml"


def test_unknown_template_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OrchestratorError, match="unknown template 'autumn'.*flash, spring"):
        scaffold(tmp_path / "ev", "autumn", today=TODAY)
    assert not (tmp_path / "ev").exists()


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("", encoding="utf-8")
    with pytest.raises(OrchestratorError, match="not a folder"):
        scaffold(target, "spring", today=TODAY)


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("orchestrator")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from orchestrator.cli import main; main()"]


def test_init_then_validate_through_the_real_command(tmp_path: Path) -> None:
    target = tmp_path / "flash-night"
    env = {**os.environ, "LANG": "C.UTF-8", "LANGUAGE": "en"}
    init = subprocess.run([*_cli(), "init", str(target), "--template", "flash"], capture_output=True, text=True, env=env, timeout=60)
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines()[0] == str(target / "playbook.yaml")
    check = subprocess.run([*_cli(), "validate", str(target / "playbook.yaml")], capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "valid" in check.stderr + check.stdout
    # the date was filled from today's date: a Saturday at least two weeks away
    start = next(line for line in (target / "playbook.yaml").read_text(encoding="utf-8").splitlines() if line.strip().startswith("start:"))
    day = datetime.strptime(start.split()[1], "%Y-%m-%d").date()
    assert day.weekday() == 5 and (day - date.today()).days >= 14
    again = subprocess.run([*_cli(), "init", str(target), "--template", "flash"], capture_output=True, text=True, env=env, timeout=60)
    assert again.returncode == 1 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_init_writes_the_schema_the_playbook_names(tmp_path: Path) -> None:
    import json

    from orchestrator.schema import playbook_schema

    written = scaffold(tmp_path / "ev", "spring", today=date(2026, 11, 23))
    schema = tmp_path / "ev" / "playbook.schema.json"
    assert schema in written
    assert json.loads(schema.read_text(encoding="utf-8")) == playbook_schema()
    first_line = (tmp_path / "ev" / "playbook.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=./playbook.schema.json"
