"""The `orchestrator` command line, run in-process with click's CliRunner (and once for real)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from orchestrator.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["--lang", "en", *args])


def broken_copy(minimal: Path) -> Path:
    """The minimal playbook with one error (margin 200 = capacity) besides its warning (no group codes)."""
    text = minimal.read_text(encoding="utf-8").replace("margin: 190", "margin: 200")
    minimal.write_text(text, encoding="utf-8")
    return minimal


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert f" {command} [OPTIONS]" in result.output.splitlines()[0]
    summary = (cli.commands[command].help or "").split("\n")[0]
    assert summary and summary in " ".join(result.output.split())  # help wraps lines; compare words


def test_the_group_help_lists_every_command() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in cli.commands:
        assert f"  {command} " in result.output


# --- validate ----------------------------------------------------------------------------------


def test_a_valid_playbook_passes_and_its_warning_fails_it_only_with_strict(minimal: Path) -> None:
    lenient = run("validate", str(minimal))
    assert lenient.exit_code == 0
    assert f"{minimal}:48:11: warning: no group codes yet" in lenient.stdout
    assert f"{minimal}: valid, 1 warning(s)" in lenient.stderr

    strict = run("validate", "--strict", str(minimal))
    assert strict.exit_code == 1
    assert f"{minimal}:48:11: warning: no group codes yet" in strict.stdout


def test_errors_fail_and_print_before_the_warnings_set_apart(minimal: Path) -> None:
    path = broken_copy(minimal)
    result = run("validate", str(path))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{path}:50:13: margin 200 must be below capacity 200: the code rotates before a group is full (e.g. 190)"
    assert lines[1] == ""  # the warnings come after a blank line
    assert lines[2].startswith(f"{path}:48:11: warning: ")  # although line 48 comes before line 50
    assert f"{path}: 1 error(s), 1 warning(s)" in result.stderr


def test_every_file_is_checked_and_one_broken_file_fails_the_run(minimal: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for name in ("members.csv", "guides.csv"):
        (other / name).write_bytes((minimal.parent / name).read_bytes())
    (other / "playbook.yaml").write_text(minimal.read_text(encoding="utf-8").replace("margin: 190", "margin: 200"), encoding="utf-8")
    result = run("validate", str(minimal), str(other / "playbook.yaml"))
    assert result.exit_code == 1
    assert f"{minimal}: valid, 1 warning(s)" in result.stderr
    assert f"{other / 'playbook.yaml'}: 1 error(s), 1 warning(s)" in result.stderr


def test_a_missing_file_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'nope.yaml'}:1:1: file not found" in result.stdout


def test_validate_json_lists_each_file_with_its_findings(minimal: Path) -> None:
    path = broken_copy(minimal)
    result = run("validate", "--json", str(path))
    assert result.exit_code == 1
    [report] = json.loads(result.stdout)
    assert report["file"] == str(path) and report["valid"] is False
    assert report["diagnostics"] == [
        {"file": str(path), "line": 48, "col": 11, "code": "join-no-codes", "severity": "warning",
         "message": "no group codes yet: add them under path.join.codes before the join opens"},
        {"file": str(path), "line": 50, "col": 13, "code": "group-margin", "severity": "error",
         "message": "margin 200 must be below capacity 200: the code rotates before a group is full (e.g. 190)"},
    ]


def test_messages_follow_lang_en(minimal: Path) -> None:
    # --lang zh is checked where the Chinese catalog is (tests/orchestrator/test_i18n.py)
    result = run("validate", str(broken_copy(minimal)))
    assert "margin 200 must be below capacity 200" in result.stdout
    assert "error(s)" in result.stderr


# --- plan --------------------------------------------------------------------------------------


def plan_json(*args: str) -> dict:  # type: ignore[type-arg]
    result = run("plan", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_plan_json_is_the_whole_timeline_in_order(minimal: Path) -> None:
    p = plan_json(str(minimal))
    assert (p["event"], p["timezone"], p["live_start"], p["live_end"]) == (
        "mini-live", "Asia/Shanghai", "2026-12-05T19:00:00+08:00", "2026-12-05T21:00:00+08:00")
    ids = [s["id"] for s in p["steps"]]
    assert ids == ["poster", "join:open", "reminder:hour", "live:start", "sop:1", "sop:2", "draw:screenshot:1",
                   "draw:screenshot:2", "live:end", "close"]
    moments = [datetime.fromisoformat(s["at"]) for s in p["steps"]]
    assert moments == sorted(moments)
    hour = p["steps"][2]
    assert (hour["at"], hour["audience"], hour["channels"]) == ("2026-12-05T18:00:00+08:00", 3, {"console": 2, "sms": 1})


def test_plan_start_moves_the_live_and_everything_relative_to_it(minimal: Path) -> None:
    before = {s["id"]: datetime.fromisoformat(s["at"]) for s in plan_json(str(minimal))["steps"]}
    moved = plan_json(str(minimal), "--start", "2026-12-12T20:00")
    after = {s["id"]: datetime.fromisoformat(s["at"]) for s in moved["steps"]}
    assert moved["live_start"] == "2026-12-12T20:00:00+08:00" and moved["shift_s"] == (7 * 24 + 1) * 3600
    for step in ("reminder:hour", "live:start", "sop:2", "live:end", "close"):
        assert after[step] - before[step] == timedelta(days=7, hours=1), step
    assert after["poster"] == datetime.fromisoformat("2026-12-10T10:00:00+08:00")  # T-2d 10:00 keeps its wall clock


def test_plan_prints_a_table_and_refuses_a_broken_playbook(minimal: Path) -> None:
    table = run("plan", str(minimal))
    assert table.exit_code == 0
    assert "reminder:hour" in table.stdout and "live starts" in table.stdout
    broken = run("plan", str(broken_copy(minimal)))
    assert broken.exit_code == 1
    assert "margin 200" in broken.stderr and broken.stdout == ""


def test_a_start_that_is_not_a_moment_is_a_usage_error(minimal: Path) -> None:
    result = run("plan", str(minimal), "--start", "next friday")
    assert result.exit_code == 2
    assert "'next friday' is not a date and time" in result.output


# --- render, schema ----------------------------------------------------------------------------


def test_render_fills_the_sms_template_for_a_member(minimal: Path) -> None:
    result = run("render", str(minimal), "reminder:hour", "--member", "m1")
    assert result.exit_code == 0, result.output
    assert "channel: sms" in result.stdout
    assert 'sms template: SMS_100001 {"name": "张三"}' in result.stdout
    assert "【迷你品牌】张三，直播一小时后开始，回复TD退订" in result.stdout


def test_render_uses_the_copy_for_a_member_without_sms_consent(minimal: Path) -> None:
    result = run("render", str(minimal), "reminder:hour", "--member", "m3")
    assert result.exit_code == 0, result.output
    assert "channel: console" in result.stdout
    assert "王五，迷你直播一小时后开始：https://channels.weixin.qq.com/live/mini" in result.stdout


def test_schema_is_json_schema_of_the_playbook() -> None:
    result = run("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "id", "title", "goal", "audience", "lever", "mechanism", "path"} <= set(schema["required"])


# --- the real entry point and the layering -----------------------------------------------------


def test_the_installed_entry_point_reports_an_unknown_step_in_one_line(minimal: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "--lang", "en", "render", str(minimal), "nope"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "error: no step 'nope'; steps with copy: reminder:hour" in result.stderr
    assert "Traceback" not in result.stderr


def test_importing_the_engine_loads_no_web_code() -> None:
    subprocess.run(
        [sys.executable, "-c", "import orchestrator, orchestrator.cli, sys; assert 'starlette' not in sys.modules, 'starlette'"],
        check=True, timeout=60,
    )
