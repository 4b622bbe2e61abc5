"""YAML text -> plain data, remembering where every key and value stands.

We compose YAML nodes ourselves (instead of `yaml.safe_load`) so that every value keeps its
line and column, duplicate keys are errors rather than silently overwritten, and timestamps,
leading-zero numbers and other YAML 1.1 surprises stay the strings the author wrote.
"""

from __future__ import annotations

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
    def __init__(self, file: str) -> None:
        self.file = file
        self.located = Located(data=None, file=file)
        self.diagnostics: list[Diagnostic] = []

    def pos(self, node: yaml.Node) -> Position:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        if depth > 64:
            self.error(node, "too-deep", _("nesting is deeper than 64 levels"))
            return None
        self.located.values.setdefault(path, self.pos(node))
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
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
                self.located.block_text[path + (key,)] = (value_node.start_mark.line + 2, 1)
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

    def error(self, node: yaml.Node, code: str, message: str) -> None:
        line, col = self.pos(node)
        self.diagnostics.append(Diagnostic(self.file, line, col, code, message))


def _syntax_hint(problem: str, text: str, line: int, col: int) -> str:
    lines = text.splitlines()
    here = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in here[: col + 1]:
        return " " + _("(indent with spaces, not tabs)")
    if "another document" in problem:
        return " " + _("(a playbook is a single YAML document: remove the '---' line)")
    if "mapping values are not allowed" in problem:
        return " " + _("(a value containing ': ' must be quoted, or a key is indented wrongly)")
    if "could not find expected ':'" in problem:
        return " " + _("(a key is missing its ':' or a quote is not closed)")
    return ""


def parse_yaml(text: str, file: str) -> tuple[Located | None, list[Diagnostic]]:
    """Compose `text`; return the located data or the syntax diagnostics."""
    if "\x00" in text:
        return None, [Diagnostic(file, 1, 1, "binary", _("the file contains NUL bytes; it is not a text file"))]
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = str(e.problem or e.context or "syntax error")
        message = _("YAML syntax error: {problem}").format(problem=problem) + _syntax_hint(problem, text, line, col)
        return None, [Diagnostic(file, line, col, "yaml-syntax", message)]
    except yaml.YAMLError as e:  # reader errors: control characters and the like
        mark = getattr(e, "position", None)
        message = _("YAML syntax error: {problem}").format(problem=str(e).splitlines()[0])
        return None, [Diagnostic(file, 1, 1 if mark is None else int(mark) + 1, "yaml-syntax", message)]
    if node is None:
        return None, [Diagnostic(file, 1, 1, "empty", _("the file is empty; a playbook starts with 'version: 1'"))]
    builder = _Builder(file)
    data = builder.build(node, ())
    builder.located.data = data
    return builder.located, builder.diagnostics
