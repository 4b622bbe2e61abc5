"""Fuzzing the loader, the validator and the command line: whatever the text, findings and never a traceback.

Inputs are random text, random bytes, YAML-ish fragments built from the format's own keys, and
mutations of real playbooks (the minimal fixture and every example in playbooks/): a line
deleted, duplicated, swapped or re-indented, a value replaced, the file cut short.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import cli
from orchestrator.diagnostics import Diagnostic
from orchestrator.load import check_playbook, check_text
from orchestrator.plan import plan
from orchestrator.validate import validate

ROOT = Path(__file__).parents[2]
MINIMAL = ROOT / "tests" / "fixtures" / "minimal" / "playbook.yaml"
EXAMPLES = [MINIMAL] + sorted((ROOT / "playbooks").glob("*.yaml"))
SOURCES = {path: path.read_text(encoding="utf-8") for path in EXAMPLES}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = ["version", "id", "title", "timezone", "goal", "statement", "kpi", "audience", "segments", "file", "members",
        "lever", "incentives", "copy", "copy_file", "mechanism", "prizes", "value_cny", "screenshot_draw", "deposit_draw",
        "cutoff", "draw_at", "notice", "path", "poster", "at", "guides", "variants", "join", "kind", "capacity", "margin",
        "reminders", "channels", "sms", "params", "live", "start", "end", "support", "sop", "minute", "policy",
        "quiet_hours", "caps", "per_day"]
VALUES = ["1", "0", "-1", "T-1h", "T+90m", "T-1d 20:00", "T-400d", "2026-12-05 19:00", "2026-12-05T19:00+08:00",
          "9999-12-31 23:59", "0001-01-01 00:00", "Asia/Shanghai", "Europe/London", "off", "21:00-08:00", "yes", "~",
          "null", "[]", "{}", "[sms, console]", "'{{ member.name }}'", '"{% if %}"', "|", ">-", "&a x", "*a", "!!str 3",
          "99999999999999999999999", "1e400", ".nan", "\"unclosed", "'", "x: y", "- a", "中文", "\t", "#", "---"]


def assert_clean(diags: list[Diagnostic], shown: str, text: str) -> None:
    """Every finding has a place inside its file and says something."""
    lines = text.splitlines() or [""]
    for d in diags:
        assert d.line >= 1 and d.col >= 1, str(d)
        assert d.code and d.message.strip(), str(d)
        if d.file == shown:
            assert d.line <= len(lines) + 1, str(d)


def run_all(text: str, base: Path, shown: str = "fuzz.yaml") -> None:
    """Load, validate and plan `text` as a playbook in `base`; none of it may raise."""
    loaded, diags = check_text(text, shown, base)
    assert_clean(diags, shown, text)
    if loaded is not None:
        assert_clean(validate(loaded), shown, text)
        if not any(d.is_error for d in diags):
            plan(loaded).as_json()


@st.composite
def yamlish(draw: st.DrawFn) -> str:
    """Lines of keys, list items and values from the format's own vocabulary, at random indentation."""
    out = []
    for _ in range(draw(st.integers(1, 30))):
        indent = " " * draw(st.sampled_from([0, 0, 2, 4, 6, 1, 3]))
        shape = draw(st.sampled_from(["key", "key_value", "item", "item_key", "raw"]))
        key, value = draw(st.sampled_from(KEYS)), draw(st.sampled_from(VALUES) | st.text(max_size=12))
        out.append(indent + {"key": f"{key}:", "key_value": f"{key}: {value}", "item": f"- {value}",
                             "item_key": f"- {key}: {value}", "raw": value}[shape])
    return "\n".join(out)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Path, str]:
    """(example, its text after one to three random edits)."""
    path = draw(st.sampled_from(EXAMPLES))
    lines = SOURCES[path].splitlines()
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "swap", "indent", "value", "truncate"]))
        if edit == "delete":
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, lines[i])
        elif edit == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif edit == "indent":
            lines[i] = " " * draw(st.integers(0, 8)) + lines[i].lstrip(" ")
        elif edit == "value" and ":" in lines[i]:
            new = draw(st.sampled_from(VALUES) | st.text(max_size=20) | st.integers().map(str)
                       | st.lists(st.sampled_from(VALUES), max_size=3).map(lambda v: "[" + ", ".join(v) + "]"))
            lines[i] = lines[i][: lines[i].index(":") + 1] + " " + new
        elif edit == "truncate":
            lines = lines[:i] + [lines[i][: draw(st.integers(0, len(lines[i])))]]
    return path, "\n".join(lines) + "\n"


@FUZZ
@given(st.text(max_size=400))
def test_random_text_gives_findings_not_exceptions(text: str) -> None:
    run_all(text, MINIMAL.parent)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_give_findings_not_exceptions(data: bytes) -> None:
    run_all(data.decode("utf-8", errors="replace"), MINIMAL.parent)
    with tempfile.TemporaryDirectory() as d:  # and as a file: not UTF-8, NUL bytes, a BOM
        path = Path(d) / "playbook.yaml"
        path.write_bytes(data)
        _loaded, diags = check_playbook(path)
        assert_clean(diags, str(path), data.decode("utf-8", errors="replace"))


@FUZZ
@given(yamlish())
def test_yamlish_fragments_give_findings_not_exceptions(text: str) -> None:
    run_all(text, MINIMAL.parent)


@settings(FUZZ, max_examples=300)
@given(mutated())
def test_mutated_examples_give_findings_not_exceptions(example: tuple[Path, str]) -> None:
    path, text = example
    run_all(text, path.parent, shown=str(path))


@settings(FUZZ, max_examples=15)
@given(mutated())
def test_the_command_line_never_shows_a_traceback_for_a_mutated_example(example: tuple[Path, str]) -> None:
    source, text = example
    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / source.name
        for item in source.parent.iterdir():  # the playbook's neighbours: CSVs, copy files, folders
            if item.is_dir():
                shutil.copytree(item, Path(d) / item.name)
            elif item.suffix != ".yaml":
                shutil.copy(item, Path(d) / item.name)
        target.write_text(text, encoding="utf-8")
        runner = CliRunner()
        for args in (["validate", str(target)], ["plan", "--json", str(target)]):
            result = runner.invoke(cli, ["--lang", "en", *args])
            assert result.exit_code in (0, 1), result.output
            assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
            assert "Traceback" not in result.output
