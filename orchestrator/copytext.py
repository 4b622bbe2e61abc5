"""Message copy: Jinja2 in a sandbox with strict undefined variables.

Copy sees only what a message may say: `member`, `event`, `group`, `guide`, `lever` (and for
staff alerts `draw`, `pool`, `tasks`). Never phone numbers or e-mail addresses. The checker
reports templates that do not compile or use a name or attribute the context does not have.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError, nodes
from jinja2.runtime import new_context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from orchestrator.i18n import _

WEEKDAYS_ZH = "一二三四五六日"

# What each context name offers; None means any attribute (checked at render time only).
MEMBER_FIELDS = ("id", "name", "segment", "tags")
EVENT_FIELDS = ("id", "title", "start", "end", "start_text", "date_text", "time_text", "end_text", "room_url", "platform")
GROUP_FIELDS = ("name", "number")
GUIDE_FIELDS = ("id", "name", "channel_code", "contact_code")
INCENTIVE_FIELDS = ("name", "copy")
DRAW_FIELDS = ("number", "time_text", "winners", "prize")
POOL_FIELDS = ("remaining", "group")
TASKS_FIELDS = ("count", "guides")

AUDIENCE_NAMES = ("member", "event", "group", "guide", "lever")
GROUP_NAMES = ("event", "group", "lever")  # one text posted into a group: nothing personal
ALERT_NAMES = ("event", "draw", "pool", "tasks")


def _environment() -> SandboxedEnvironment:
    """Copy cannot reach Python internals, nor change what it is given (a list, a dict, the next person's view)."""
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


_ENV = _environment()
_HTML_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


@dataclass(frozen=True)
class CopyProblem:
    """A problem in one template: its 1-based line inside the template and the message."""

    line: int
    message: str
    code: str


@dataclass(frozen=True)
class IncentiveView:
    name: str
    copy: str

    def __str__(self) -> str:
        return self.copy


def _fields_for(name: str, incentive_ids: tuple[str, ...]) -> tuple[str, ...]:
    return {
        "member": MEMBER_FIELDS,
        "event": EVENT_FIELDS,
        "group": GROUP_FIELDS,
        "guide": GUIDE_FIELDS,
        "lever": incentive_ids,
        "draw": DRAW_FIELDS,
        "pool": POOL_FIELDS,
        "tasks": TASKS_FIELDS,
    }.get(name, ())


def _attribute_uses(tree: nodes.Template) -> Iterator[tuple[str, list[str], int]]:
    """(root name, attribute chain, line) for each `a.b.c` or `a['b']` in the template."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        chain: list[str] = []
        cur: nodes.Node = node
        while isinstance(cur, (nodes.Getattr, nodes.Getitem)):
            if isinstance(cur, nodes.Getattr):
                chain.append(cur.attr)
            elif isinstance(cur.arg, nodes.Const) and isinstance(cur.arg.value, str):
                chain.append(cur.arg.value)
            else:
                chain = []
            cur = cur.node
        if isinstance(cur, nodes.Name) and chain:
            yield cur.name, list(reversed(chain)), node.lineno


def check_copy(source: str, names: tuple[str, ...], incentive_ids: tuple[str, ...]) -> list[CopyProblem]:
    """Compile `source` and check every name and attribute it uses against the context."""
    from jinja2 import meta

    try:
        tree = _ENV.parse(source)
        _ENV.compile(tree)
    except TemplateSyntaxError as e:
        return [CopyProblem(e.lineno or 1, _("copy does not compile: {reason}").format(reason=e.message), "copy-syntax")]
    except TemplateError as e:  # e.g. an unknown filter
        return [CopyProblem(1, _("copy does not compile: {reason}").format(reason=str(e)), "copy-syntax")]
    except RecursionError:  # thousands of nested brackets
        return [CopyProblem(1, _("copy does not compile: it is nested too deeply"), "copy-syntax")]
    problems: list[CopyProblem] = []
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    from orchestrator.diagnostics import did_you_mean

    for name in sorted(meta.find_undeclared_variables(tree)):
        if name not in names:
            line = next((n.lineno for n in tree.find_all(nodes.Name) if n.name == name), 1)
            problems.append(CopyProblem(line, _("copy uses '{name}', which messages do not have; known: {known}").format(
                name=name, known=", ".join(names)) + did_you_mean(name, names), "copy-unknown-name"))
    seen: set[tuple[str, str]] = set()
    for root, chain, line in _attribute_uses(tree):
        if root in assigned or root not in names:
            continue
        fields = _fields_for(root, incentive_ids)
        attr = chain[0]
        if attr not in fields and (root, attr) not in seen:
            seen.add((root, attr))
            problems.append(CopyProblem(line, _("'{root}' has no '{attr}'; it has: {known}").format(
                root=root, attr=attr, known=", ".join(fields)) + did_you_mean(attr, fields), "copy-unknown-attribute"))
        elif root == "lever" and len(chain) > 1 and chain[1] not in INCENTIVE_FIELDS and (root, chain[1]) not in seen:
            seen.add((root, chain[1]))
            problems.append(CopyProblem(line, _("'{root}' has no '{attr}'; it has: {known}").format(
                root=f"lever.{attr}", attr=chain[1], known=", ".join(INCENTIVE_FIELDS)), "copy-unknown-attribute"))
    return sorted(problems, key=lambda p: p.line)


def used_names(source: str) -> set[str]:
    """Top-level names the copy reads (empty when it does not compile; check_copy reports that)."""
    from jinja2 import meta

    try:
        return set(meta.find_undeclared_variables(_ENV.parse(source)))
    except TemplateError:
        return set()


@lru_cache(maxsize=512)
def _compiled(source: str, html: bool) -> tuple[Template, dict[str, Any]]:
    """The template and its globals as a plain dict (Template.globals is a ChainMap: slow to merge per call)."""
    template = (_HTML_ENV if html else _ENV).from_string(source)
    return template, dict(template.globals)


def render_copy(source: str, context: Mapping[str, Any], *, html: bool = False) -> str:
    """Render copy with the given context; raises jinja2 errors (UndefinedError, ...).

    Compiled templates are cached: a fan-out renders the same copy for thousands of people. The body
    is `Template.render` without its per-call copies (same context: globals, then `context` over them)
    and with the globals as a plain dict.
    """
    template, globals_ = _compiled(source, html)
    try:
        ctx = new_context(template.environment, template.name, template.blocks, {**globals_, **context}, True, globals_)
        return template.environment.concat(template.root_render_func(ctx)).strip()
    except Exception:
        template.environment.handle_exception()
        raise  # not reached: handle_exception re-raises with the template's traceback


def mask(name: str) -> str:
    """张*明: a person's name as shown in public (first and last character kept)."""
    name = name.strip()
    if len(name) <= 1:
        return name or "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def date_text(start: datetime) -> str:
    """`12月5日（周六）`: how copy and pages write a live's day."""
    return f"{start.month}月{start.day}日（周{WEEKDAYS_ZH[start.weekday()]}）"


def event_view(pb_id: str, title: str, start: datetime, end: datetime, room_url: str, platform: str) -> dict[str, Any]:
    """The `event` object copy sees; times are already in the event timezone."""
    day = date_text(start)
    return {
        "id": pb_id, "title": title, "start": start, "end": end,
        "date_text": day, "time_text": f"{start:%H:%M}",
        "start_text": f"{day}{start:%H:%M}", "end_text": f"{end:%H:%M}",
        "room_url": room_url, "platform": platform,
    }
