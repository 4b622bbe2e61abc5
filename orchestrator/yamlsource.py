"""YAML text -> plain data, remembering where every key and value stands.

We compose YAML nodes ourselves (instead of `yaml.safe_load`) so that every value keeps its
line and column, duplicate keys are errors rather than silently overwritten, and timestamps,
leading-zero numbers and other YAML 1.1 surprises stay the strings the author wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.diagnostics import Diagnostic
from orchestrator.i18n import _

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pure-Python fallback without libyaml
    _Loader = yaml.SafeLoader

Path_ = tuple[str | int, ...]
Position = tuple[int, int]

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
MAX_DEPTH = 64
_BOOL_TRUE = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"}


@dataclass
class Located:
    """Plain data plus the 1-based position of each value and each mapping key by path."""

    data: Any
    file: str
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)
    # where a block scalar's text begins (the line after `|` or `>`), for template errors
    block_text: dict[Path_, Position] = field(default_factory=dict)

    def value_at(self, path: Path_) -> Position:
        """Position of the value at `path`, or of its nearest ancestor that exists."""
        p = tuple(path)
        while p:
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (1, 1))

    def key_at(self, path: Path_) -> Position:
        """Position of the key naming `path` (or of the value for list items)."""
        p = tuple(path)
        while p:
            if p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (1, 1))


class _Builder:
    def __init__(self, file: str, lines: list[str]) -> None:
        self.file = file
        self.lines = lines
        self.located = Located(data=None, file=file)
        self.diagnostics: list[Diagnostic] = []

    def pos(self, node: yaml.Node) -> Position:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            self.error(node, "too-deep", _("nesting is deeper than 64 levels"))
            return None
        self.located.values.setdefault(path, self.pos(node))
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self.scalar(node, path)

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merged: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                merged.extend(s for s in sources if isinstance(s, yaml.MappingNode))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, "complex-key", _("a key must be a plain word, not a list or mapping"))
                continue
            key = str(key_node.value)
            if key in out:
                first = self.located.keys[path + (key,)]
                self.error(
                    key_node,
                    "duplicate-key",
                    _("duplicate key '{key}' (first at line {line}); YAML keeps only one, so remove or rename one of them").format(
                        key=key, line=first[0]
                    ),
                )
                continue
            self.located.keys[path + (key,)] = self.pos(key_node)
            if isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">"):
                self.located.block_text[path + (key,)] = self.block_start(value_node)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        for source in merged:  # `<<: *anchor` fills keys the mapping does not set itself
            for key_node, value_node in source.value:
                key = str(key_node.value)
                if key not in out:
                    self.located.keys[path + (key,)] = self.pos(key_node)
                    out[key] = self.build(value_node, path + (key,), depth + 1)
        return out

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        text = node.value
        if node.style or node.tag == _STR:  # quoted or block: always text
            return text
        tag = node.tag
        if tag.endswith(":null"):
            return None
        if tag.endswith(":bool"):
            return text in _BOOL_TRUE
        if tag.endswith(":int"):
            digits = text.lstrip("+-").replace("_", "")
            if len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXoObB":
                return text  # 0123 is a code, not an octal number
            try:
                return int(text.replace("_", ""), 0)
            except ValueError:
                return text
        if tag.endswith(":float"):
            try:
                return float(text.replace("_", ""))
            except ValueError:
                return text
        return text  # timestamps and everything else: the author's own text

    def block_start(self, node: yaml.ScalarNode) -> Position:
        """Line after the `|` or `>` indicator, and the column where the block's text is indented to."""
        first = node.start_mark.line + 1
        for text in self.lines[first : node.end_mark.line + 1]:
            if text.strip():
                return first + 1, len(text) - len(text.lstrip(" ")) + 1
        return first + 1, 1

    def error(self, node: yaml.Node, code: str, message: str) -> None:
        line, col = self.pos(node)
        self.diagnostics.append(Diagnostic(self.file, line, col, code, message))


_QUOTED_VALUE = re.compile(r"""^\s*(?:-\s+)*(?:[^\s#"'-][^#]*?:\s+)?(["'])""")


def _unclosed_quote(lines: list[str], first: int, last: int) -> Position | None:
    """The last quoted value in lines first..last (1-based) that its own line does not close."""
    found = None
    for n in range(max(first, 1), min(last, len(lines)) + 1):
        m = _QUOTED_VALUE.match(lines[n - 1])
        if m is None:
            continue
        quote, rest = m.group(1), lines[n - 1][m.end():]
        closer = r'(?<!\\)"' if quote == '"' else r"'(?!')"
        if re.search(closer, rest.replace("''", "")) is None:
            found = (n, m.start(1) + 1)
    return found


def _syntax_hint(problem: str, text: str, line: int, col: int, e: yaml.MarkedYAMLError | None = None) -> str:
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    context = str(e.context or "") if e is not None else ""
    if e is not None and e.context_mark is not None and context.startswith("while parsing a flow"):
        opened = "[" if "sequence" in context else "{"
        return " " + _("(the '{opened}' at line {line}, column {col} is not closed, or an item lacks a comma)").format(
            opened=opened, line=e.context_mark.line + 1, col=e.context_mark.column + 1)
    if "\t" in here[: col + 1]:
        return " " + _("(indent with spaces, not tabs)")
    if "another document" in problem:
        return " " + _("(a playbook is a single YAML document: remove the '---' line)")
    if "mapping values are not allowed" in problem:
        return " " + _("(a value containing ': ' must be quoted, or a key is indented wrongly)")
    if "could not find expected ':'" in problem:
        return " " + _("(a key is missing its ':' or a quote is not closed)")
    return ""


def _line_col(text: str, index: int) -> Position:
    """1-based line and column of `text[index]`, counting line breaks as YAML does."""
    before = (text[:index] + "x").splitlines()
    return len(before), len(before[-1])


def _mark_position(mark: Any) -> Position:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _shape(text: str, file: str) -> Diagnostic | None:
    """Nesting too deep or aliases expanding too far, found from the parser's events before anything is composed.

    libyaml composes nodes recursively in C: some 30,000 nested brackets overflow its stack and
    kill the process. Aliases can expand a small file exponentially ("billion laughs"); counting
    each anchor's expanded size finds the alias that does it. Events are produced iteratively.
    """
    loader = _Loader(text)
    budget = 4 * len(text) + 10_000  # a real playbook has fewer values than characters
    try:
        open_counts: list[list[Any]] = []  # [anchor, values so far] of each open mapping or sequence
        sizes: dict[str, int] = {}  # anchor -> values it expands to
        expanded = 0
        while loader.check_event():
            event = loader.get_event()
            n = 0
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if len(open_counts) >= MAX_DEPTH:
                    line, col = _mark_position(event.start_mark)
                    return Diagnostic(file, line, col, "too-deep", _("nesting is deeper than 64 levels"))
                open_counts.append([event.anchor, 1])
                expanded += 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, n = open_counts.pop()
                if anchor is not None:
                    sizes[anchor] = n
            elif isinstance(event, yaml.ScalarEvent):
                n = 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
                expanded += 1
            elif isinstance(event, yaml.AliasEvent):
                line, col = _mark_position(event.start_mark)
                if any(anchor == event.anchor for anchor, _n in open_counts):
                    return Diagnostic(file, line, col, "recursive-alias", _("this alias (*name) refers to a mapping or list that contains it"))
                n = sizes.get(event.anchor or "", 1)
                expanded += n
                if expanded > budget:
                    return Diagnostic(file, line, col, "too-many-values", _("this alias (*name) expands the file to far too many values"))
            if n and open_counts:
                open_counts[-1][1] += n
        return None
    finally:
        loader.dispose()


def parse_yaml(text: str, file: str) -> tuple[Located | None, list[Diagnostic]]:
    """Compose `text`; return the located data or the syntax diagnostics."""
    if "\x00" in text:
        return None, [Diagnostic(file, 1, 1, "binary", _("the file contains NUL bytes; it is not a text file"))]
    try:
        refused = _shape(text, file)
        if refused is not None:
            return None, [refused]
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = str(e.problem or e.context or "syntax error")
        if e.context == "while scanning a quoted scalar" and e.context_mark is not None:
            quote: Position | None = (e.context_mark.line + 1, e.context_mark.column + 1)
        else:
            quote = _unclosed_quote(text.splitlines(), e.context_mark.line + 1 if e.context_mark else 1, line)
        if quote is not None:  # the parser stumbles where the runaway quote ends; point at its start
            message = _("YAML syntax error: the quote opened here is not closed (the parser stopped at line {line}: {problem})").format(
                line=line, problem=problem)
            return None, [Diagnostic(file, quote[0], quote[1], "yaml-syntax", message)]
        message = _("YAML syntax error: {problem}").format(problem=problem) + _syntax_hint(problem, text, line, col, e)
        return None, [Diagnostic(file, line, col, "yaml-syntax", message)]
    except UnicodeEncodeError as e:  # lone surrogates: text that never came from a UTF-8 file
        line, col = _line_col(text, e.start)
        return None, [Diagnostic(file, line, col, "encoding", _("the text contains characters that are not valid Unicode"))]
    except yaml.YAMLError as e:  # reader errors: control characters and the like
        # the error's position counts bytes (libyaml) or characters (PyYAML); find the character instead
        bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
        line, col = _line_col(text, 0 if bad is None else bad.start())
        message = _("YAML syntax error: {problem}").format(problem=str(e).splitlines()[0])
        return None, [Diagnostic(file, line, col, "yaml-syntax", message)]
    if node is None:
        return None, [Diagnostic(file, 1, 1, "empty", _("the file is empty; a playbook starts with 'version: 1'"))]
    builder = _Builder(file, text.splitlines())
    data = builder.build(node, ())
    builder.located.data = data
    return builder.located, builder.diagnostics
