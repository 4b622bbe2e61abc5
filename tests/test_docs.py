"""The docs stay true to the code.

- docs/playbook.md documents every field of the JSON Schema (with its default or "required", in
  the section of the model's path) and every diagnostic code the code base can emit;
- its YAML examples use only real fields, and its complete example validates cleanly;
- docs/cli.md holds the real `--help` output of every command, and docs/playbook.md the real
  plan of its complete example.

Regenerate the generated parts after changing a command or the plan table:

    UPDATE_DOCS=1 python -m pytest tests/test_docs.py

(or `python tests/test_docs.py`).
"""

from __future__ import annotations

import ast
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from orchestrator import load as load_module
from orchestrator import playbook as playbook_module
from orchestrator.schema import playbook_schema
from orchestrator.timespec import format_duration

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PLAYBOOK_MD = DOCS / "playbook.md"
CLI_MD = DOCS / "cli.md"
SCHEMA_MD = DOCS / "schema.md"
PACKAGE = ROOT / "orchestrator"

CLI_BEGIN = "<!-- cli:begin -->"
CLI_END = "<!-- cli:end -->"
PLAN_BEGIN = "<!-- plan:begin -->"
PLAN_END = "<!-- plan:end -->"
REGENERATE = "UPDATE_DOCS=1 python -m pytest tests/test_docs.py"


# --- reading markdown ---------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def code_spans(text: str) -> set[str]:
    """The contents of every `code span` in the text."""
    return {m.strip() for m in re.findall(r"`([^`\n]+)`", text)}


def _outside_fences(lines: list[str]) -> Iterator[tuple[int, str, bool]]:
    """(index, line, is_outside_a_code_fence) for each line."""
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            yield i, line, False
            continue
        yield i, line, not fenced


def sections(text: str) -> list[tuple[str, list[str]]]:
    """(heading text, the lines up to the next heading of any level), headings outside fences."""
    lines = text.splitlines()
    out: list[tuple[str, list[str]]] = []
    for _i, line, outside in _outside_fences(lines):
        if outside and re.match(r"^#{1,6} ", line):
            out.append((line.lstrip("#").strip(), []))
        elif out:
            out[-1][1].append(line)
    return out


def split_row(line: str) -> list[str]:
    """Cells of a markdown table row; `\\|` is a literal bar."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    cells, cur, i = [], "", 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1 : i + 2] == "|":
            cur += "|"
            i += 2
            continue
        if s[i] == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += s[i]
        i += 1
    cells.append(cur.strip())
    return cells


def field_rows(lines: list[str]) -> dict[str, list[str]]:
    """Field name -> cells, for table rows whose first cell is a code span."""
    rows = {}
    for line in lines:
        if line.startswith("| `"):
            cells = split_row(line)
            rows[cells[0].strip("`")] = cells
    return rows


def fenced_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """(language, body, example-file name from a preceding `<!-- example-file: NAME -->`)."""
    blocks = []
    pattern = re.compile(r"(?:<!-- example-file: (?P<name>\S+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.S | re.M)
    for m in pattern.finditer(text):
        blocks.append((m.group("lang"), m.group("body"), m.group("name")))
    return blocks


# --- the schema -----------------------------------------------------------------------------


def schema_field_names(node: Any) -> set[str]:
    """Every property name anywhere in the schema (authors' names: aliases, as the schema has them)."""
    names: set[str] = set()
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            names |= set(props)
        for value in node.values():
            names |= schema_field_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= schema_field_names(value)
    return names


def _refs(node: dict[str, Any], suffix: str = "") -> Iterator[tuple[str, str]]:
    """(path suffix, $defs name) for each model a property holds, through Optional and lists."""
    if "$ref" in node:
        yield suffix, node["$ref"].rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in node.get(key, []):
            yield from _refs(sub, suffix)
    if isinstance(node.get("items"), dict):
        yield from _refs(node["items"], suffix + "[]")


def model_paths(schema: dict[str, Any]) -> dict[str, set[str]]:
    """$defs name -> the dotted paths where the model appears, e.g. Join -> {'path.join'}."""
    out: dict[str, set[str]] = defaultdict(set)

    def visit(model: dict[str, Any], path: str) -> None:
        for name, sub in model.get("properties", {}).items():
            for suffix, ref in _refs(sub):
                target = schema["$defs"][ref]
                if "properties" not in target:
                    continue  # an enum such as Channel
                where = f"{path}.{name}{suffix}" if path else f"{name}{suffix}"
                if where not in out[ref]:
                    out[ref].add(where)
                    visit(target, where)

    visit(schema, "")
    return dict(out)


def _default_text(model: type[BaseModel], alias: str) -> str | None:
    """How docs/playbook.md writes the field's default, for plain values; None to skip."""
    field = next(f for name, f in model.model_fields.items() if (f.alias or name) == alias)
    value = field.default
    if value is PydanticUndefined or value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (int, str)):
        return str(value) if value != "" else '""'
    return None


# --- (a) fields -----------------------------------------------------------------------------


def test_every_schema_field_is_documented() -> None:
    names = schema_field_names(playbook_schema())
    assert len(names) > 100, "the schema walk found too few fields"
    missing = sorted(names - code_spans(_read(PLAYBOOK_MD)))
    assert not missing, f"fields not documented in docs/playbook.md as `code`: {missing}"


def test_every_model_has_its_own_section_with_all_fields_and_defaults() -> None:
    schema = playbook_schema()
    secs = sections(_read(PLAYBOOK_MD))
    problems: list[str] = []
    models: list[tuple[str, dict[str, Any], set[str]]] = [("Playbook", schema, set())]
    models += [(name, schema["$defs"][name], paths) for name, paths in sorted(model_paths(schema).items())]
    for name, definition, paths in models:
        if name == "Playbook":
            found = [lines for heading, lines in secs if heading.startswith("Top level")]
            where = "a heading starting 'Top level'"
        else:
            found = [lines for heading, lines in secs if code_spans(heading) & paths]
            where = "a heading naming one of " + ", ".join(f"`{p}`" for p in sorted(paths))
        if not found:
            problems.append(f"{name}: no section with {where}")
            continue
        rows = field_rows(found[0])
        model = getattr(playbook_module, name, None)
        required = set(definition.get("required", []))
        for field in definition["properties"]:
            row = rows.get(field)
            if row is None:
                problems.append(f"{name}: no table row for `{field}` under {where}")
                continue
            if len(row) < 5:
                problems.append(f"{name}.{field}: a row needs field | type | default | meaning | example")
                continue
            default_cell = row[2].strip("* ")
            if (default_cell == "required") != (field in required):
                problems.append(f"{name}.{field}: default cell says {row[2]!r} but the field is {'required' if field in required else 'optional'}")
            expected = _default_text(model, field) if model is not None else None
            if expected is not None and f"`{expected}`" not in row[2]:
                problems.append(f"{name}.{field}: default should read `{expected}`, the docs say {row[2]!r}")
        extra = sorted(set(rows) - set(definition["properties"]))
        if extra:
            problems.append(f"{name}: documented fields the model does not have: {extra}")
    assert not problems, "docs/playbook.md field tables:\n" + "\n".join(problems)


# --- (b) diagnostic codes -------------------------------------------------------------------

# Where a code is passed: the callable's name -> index of the positional argument holding it.
CODE_ARGUMENT = {"Diagnostic": 3, "CopyProblem": 2, "error": 1, "warn": 1, "add": 1, "at_copy": 2}
CODE_FORM = re.compile(r"^[a-z][a-z0-9_]*(-[a-z0-9_]+)*$")
# Code arguments that are not string literals, and the codes each can produce.
DYNAMIC_CODES: dict[str, set[str]] = {
    # helpers that forward their own `code` parameter (_Findings.add, yamlsource's error,
    # load.pydantic_diagnostics): their callers' literals are collected instead
    "code": set(),
    # validate.py re-reports CopyProblem codes, which are collected from copytext.py
    "p.code": set(),
    # sheets._optional: f"csv-bad-{column}", called for the phone and email columns (checked below)
    "f'csv-bad-{column}'": {"csv-bad-phone", "csv-bad-email"},
}
OPTIONAL_COLUMNS = {"phone", "email"}


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _code_argument(node: ast.Call, name: str) -> ast.expr | None:
    index = CODE_ARGUMENT[name]
    if len(node.args) > index:
        return node.args[index]
    return next((k.value for k in node.keywords if k.arg == "code"), None)


def _severity(node: ast.Call, name: str) -> str:
    """'warning' when the call passes Severity.WARNING or is a .warn(...), else 'error'."""
    values = [*node.args, *(k.value for k in node.keywords)]
    if name == "warn" or any(isinstance(v, ast.Attribute) and v.attr == "WARNING" for v in values):
        return "warning"
    return "error"


def emitted_codes() -> tuple[dict[str, set[str]], list[str]]:
    """(every diagnostic code in orchestrator/*.py -> its severities, code arguments the test cannot resolve)."""
    codes: dict[str, set[str]] = defaultdict(set)
    unresolved: list[str] = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (name := _call_name(node)) in CODE_ARGUMENT:
                arg = _code_argument(node, name)
                if arg is None:
                    continue  # e.g. set.add(x)
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    if CODE_FORM.match(arg.value):
                        codes[arg.value].add(_severity(node, name))
                    elif name in ("Diagnostic", "CopyProblem", "at_copy"):
                        unresolved.append(f"{path.name}:{node.lineno}: {arg.value!r} is not a code like 'csv-bad-id'")
                    continue  # .error/.warn/.add with other text: not a findings call
                text = ast.unparse(arg)
                if text in DYNAMIC_CODES:
                    for code in DYNAMIC_CODES[text]:
                        codes[code].add(_severity(node, name))
                else:
                    unresolved.append(f"{path.name}:{node.lineno}: {text}")
            if isinstance(node, ast.Call) and _call_name(node) == "_optional" and len(node.args) > 3:
                column = node.args[3]
                if not (isinstance(column, ast.Constant) and column.value in OPTIONAL_COLUMNS):
                    unresolved.append(f"{path.name}:{node.lineno}: _optional column {ast.unparse(column)}")
    for code in pydantic_codes():
        codes[code].add("error")
    return dict(codes), unresolved


def pydantic_codes() -> set[str]:
    """Codes load._message gives pydantic errors: its literal returns plus our own error types."""
    tree = ast.parse((PACKAGE / "load.py").read_text(encoding="utf-8"))
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_message")
    codes = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            first = node.value.elts[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                codes.add(first.value)
    # `kind.replace("_", "-")` for our own PydanticCustomError types (timespec and playbook templates)
    codes |= {kind.replace("_", "-") for kind in load_module._CUSTOM}
    return codes


def test_code_extraction_finds_the_codes() -> None:
    codes, unresolved = emitted_codes()
    assert not unresolved, (
        "diagnostic codes the test cannot read (add them to DYNAMIC_CODES in tests/test_docs.py): " + ", ".join(unresolved)
    )
    assert len(codes) > 60
    assert {"yaml-syntax", "unknown-key", "missing", "csv-bad-phone", "copy-syntax", "prize-over-limit", "timespec"} <= set(codes)


def test_every_diagnostic_code_is_documented() -> None:
    codes, _unresolved = emitted_codes()
    missing = sorted(set(codes) - code_spans(_read(PLAYBOOK_MD)))
    assert not missing, f"diagnostic codes not documented in docs/playbook.md as `code`: {missing}"


def check_table_rows() -> list[tuple[str, str]]:
    """(code, severity) for each row of the tables in docs/playbook.md's Checks section."""
    rows = []
    for line in _read(PLAYBOOK_MD).splitlines():
        if line.startswith("| `"):
            cells = split_row(line)
            if len(cells) >= 3 and cells[1] in ("error", "warning"):
                rows.append((cells[0].strip("`"), cells[1]))
    return rows


def test_check_tables_match_the_code() -> None:
    codes, _unresolved = emitted_codes()
    rows = check_table_rows()
    problems = [f"`{code}` is documented but nothing emits it" for code, _sev in rows if code not in codes]
    problems += [f"`{code}` is documented as {sev}, the code emits it as {'/'.join(sorted(codes[code]))}"
                 for code, sev in rows if code in codes and sev not in codes[code]]
    problems += [f"`{code}` has no row in the Checks tables" for code in sorted(set(codes) - {c for c, _s in rows})]
    assert not problems, "docs/playbook.md Checks tables:\n" + "\n".join(problems)


# --- (c) docs/cli.md ------------------------------------------------------------------------


def _trim(output: str) -> str:
    """Command output without trailing spaces (editors strip them from markdown)."""
    return "\n".join(line.rstrip() for line in output.rstrip().splitlines())


def cli_reference() -> str:
    """The generated part of docs/cli.md: `--help` of the group and of every command."""
    from orchestrator.cli import cli
    from orchestrator.i18n import current_language, set_language

    runner = CliRunner()
    before = current_language()
    parts = []
    try:
        for args in [[], *([name] for name in sorted(cli.commands))]:
            result = runner.invoke(cli, [*args, "--help"], prog_name="orchestrator", env={"COLUMNS": "100", "ORCH_LANG": "en"})
            assert result.exit_code == 0, result.output
            title = " ".join(["orchestrator", *args])
            parts.append(f"### `{title}`\n\n```text\n{_trim(result.stdout)}\n```\n")
    finally:
        set_language(before)  # the group's callback switches the language for the process
    return "\n".join(parts)


def replace_generated(text: str, begin: str, end: str, body: str) -> str:
    """`text` with the part between the markers `begin` and `end` replaced by `body`."""
    assert begin in text and end in text, f"the markers {begin} and {end} are missing"
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(end, 1)
    return f"{head}{begin}\n<!-- generated by tests/test_docs.py; do not edit by hand -->\n\n{body.rstrip()}\n{end}{tail}"


def sync(doc: Path, fresh: str) -> None:
    """Pass when `doc` already reads `fresh`; rewrite it under UPDATE_DOCS=1; fail otherwise."""
    if _read(doc) == fresh:
        return
    if os.environ.get("UPDATE_DOCS"):
        doc.write_text(fresh, encoding="utf-8")
        return
    pytest.fail(f"docs/{doc.name} differs from what the commands print; regenerate it with: {REGENERATE}")


def regenerate_cli_md(text: str) -> str:
    return replace_generated(text, CLI_BEGIN, CLI_END, cli_reference())


def test_cli_md_is_the_real_help_output() -> None:
    sync(CLI_MD, regenerate_cli_md(_read(CLI_MD)))


# --- (d) YAML examples ----------------------------------------------------------------------


def _alternatives(node: dict[str, Any], defs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if "$ref" in node:
        yield from _alternatives(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    elif "anyOf" in node:
        for sub in node["anyOf"]:
            yield from _alternatives(sub, defs)
    else:
        yield node


def unknown_keys(data: Any, node: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    """Keys in `data` the schema does not have at that place."""
    alternatives = list(_alternatives(node, defs))
    problems: list[str] = []
    if isinstance(data, dict):
        objects = [a for a in alternatives if a.get("type") == "object" or "properties" in a]
        if not objects:
            return [f"{path}: a mapping where the schema has none"]
        obj = objects[0]
        props = obj.get("properties")
        if props is None:  # a free mapping such as sms.params or policy.rate_limits
            names = obj.get("propertyNames")
            allowed = next(iter(_alternatives(names, defs))).get("enum") if names else None
            problems += [f"{path}.{k}" for k in data if allowed is not None and k not in allowed]
            return problems
        for key, value in data.items():
            if key not in props:
                problems.append(f"{path}.{key}".lstrip("."))
            else:
                problems += unknown_keys(value, props[key], defs, f"{path}.{key}".lstrip("."))
    elif isinstance(data, list):
        arrays = [a for a in alternatives if a.get("type") == "array"]
        if arrays:
            for i, item in enumerate(data):
                problems += unknown_keys(item, arrays[0].get("items", {}), defs, f"{path}[{i}]")
    return problems


def test_yaml_examples_use_only_real_fields() -> None:
    schema = playbook_schema()
    blocks = [(body, name) for lang, body, name in fenced_blocks(_read(PLAYBOOK_MD)) if lang == "yaml"]
    assert len(blocks) >= 10
    problems = []
    for body, _name in blocks:
        data = yaml.safe_load(body)
        assert isinstance(data, dict), f"a yaml example is not a playbook fragment:\n{body}"
        problems += unknown_keys(data, schema, schema["$defs"], "")
    assert not problems, f"yaml examples in docs/playbook.md use keys the playbook does not have: {problems}"


def write_example(folder: Path) -> Path:
    """Write the blocks marked `<!-- example-file: NAME -->` into `folder`; the playbook's path."""
    files = {name: body for _lang, body, name in fenced_blocks(_read(PLAYBOOK_MD)) if name}
    assert "playbook.yaml" in files, "docs/playbook.md should carry a complete example (<!-- example-file: playbook.yaml -->)"
    for name, body in files.items():
        (folder / name).write_text(body, encoding="utf-8")
    return folder / "playbook.yaml"


def test_complete_example_validates(tmp_path: Path) -> None:
    from orchestrator.load import check_playbook
    from orchestrator.validate import validate

    loaded, diags = check_playbook(write_example(tmp_path))
    assert loaded is not None and not diags, "\n".join(str(d) for d in diags)
    findings = validate(loaded)
    assert not findings, "\n".join(f"{d.code}: {d}" for d in findings)


def example_plan(folder: Path) -> str:
    """What `orchestrator --lang en plan` prints for the complete example."""
    from orchestrator.cli import cli
    from orchestrator.i18n import current_language, set_language

    playbook = write_example(folder)
    before = current_language()
    try:
        result = CliRunner().invoke(cli, ["--lang", "en", "plan", str(playbook)], prog_name="orchestrator", env={"COLUMNS": "100"})
    finally:
        set_language(before)
    assert result.exit_code == 0, result.output
    return "```text\n" + _trim(result.stdout) + "\n```"


def test_example_plan_is_the_real_output(tmp_path: Path) -> None:
    sync(PLAYBOOK_MD, replace_generated(_read(PLAYBOOK_MD), PLAN_BEGIN, PLAN_END, example_plan(tmp_path)))


# --- links ----------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", [PLAYBOOK_MD, SCHEMA_MD, CLI_MD], ids=lambda p: p.name)
def test_links_resolve(doc: Path) -> None:
    text = _read(doc)
    anchors: set[str] = set()
    seen: dict[str, int] = defaultdict(int)
    for heading, _lines in sections(text):
        slug = _slug(heading)
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        if file and not (doc.parent / file).exists():
            broken.append(target)
        elif not file and anchor not in anchors:
            broken.append(target)
    assert not broken, f"broken links in {doc.name}: {broken}"


if __name__ == "__main__":
    import tempfile

    CLI_MD.write_text(regenerate_cli_md(_read(CLI_MD)), encoding="utf-8")
    with tempfile.TemporaryDirectory() as folder:
        PLAYBOOK_MD.write_text(replace_generated(_read(PLAYBOOK_MD), PLAN_BEGIN, PLAN_END, example_plan(Path(folder))), encoding="utf-8")
    print(f"wrote {CLI_MD} and {PLAYBOOK_MD}")
