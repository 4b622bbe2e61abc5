"""A playbook file -> a loaded playbook: the typed model plus the members, guides and copy it references.

The loader collects every problem it can find in one pass: YAML syntax, structure and types
(pydantic, with positions mapped back to the file), and the referenced files. Cross-field
rules (times, limits, policy, the law) are `validate.py`'s job.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.diagnostics import Diagnostic, Severity, did_you_mean, sorted_diagnostics
from orchestrator.errors import PlaybookError
from orchestrator.i18n import _
from orchestrator.playbook import (
    COLOUR,
    IDENT,
    SECTIONS,
    SLUG,
    Excluded,
    Guide,
    Member,
    Playbook,
)
from orchestrator.playbook import TEMPLATES as MODEL_TEMPLATES
from orchestrator.sheets import (
    EXCLUDED_COLUMNS,
    GUIDE_COLUMNS,
    MEMBER_COLUMNS,
    excluded_from_sheet,
    guides_from_sheet,
    members_from_sheet,
    normalise_phone,
    read_sheet,
)
from orchestrator.timespec import TEMPLATES as TIME_TEMPLATES
from orchestrator.yamlsource import Located, Path_, parse_yaml

MAX_PLAYBOOK_BYTES = 5 * 1024 * 1024


@dataclass
class Copy:
    """One piece of message copy and where its text begins (for error positions)."""

    source: str
    file: str
    line: int
    col: int
    block: bool  # text starts on `line` itself (file or block scalar) rather than inside a one-line value


@dataclass
class LoadedPlaybook:
    file: str
    base: Path
    located: Located
    playbook: Playbook
    members: dict[str, Member] = field(default_factory=dict)
    extra_segments: dict[str, set[str]] = field(default_factory=dict)
    guides: list[Guide] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    copies: dict[Path_, Copy] = field(default_factory=dict)
    with_members: bool = True  # False: loaded for a worker, which reads the audience from the store

    def segments_of(self, member: Member) -> set[str]:
        extra = self.extra_segments.get(member.id)
        return {member.segment} | extra if extra else {member.segment}

    def at(self, path: Path_) -> tuple[str, int, int]:
        line, col = self.located.value_at(path)
        return self.file, line, col

    def key_at(self, path: Path_) -> tuple[str, int, int]:
        line, col = self.located.key_at(path)
        return self.file, line, col


# --- pydantic errors -> diagnostics ---------------------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """The model class inside Optional[...], list[...], dict[..., ...] or Annotated[...]."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class whose fields are valid at `loc` (a pydantic error location)."""
    model: Any = Playbook
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if part not in fields:
            return None
        model = _unwrap(fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _show(value: Any) -> str:
    if value is None:
        return _("nothing (an empty value)")
    if isinstance(value, dict):
        return _("a mapping")
    if isinstance(value, list):
        return _("a list")
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    short = text if len(text) <= 40 else text[:37] + "..."
    return short if isinstance(value, (int, float)) else repr(short)  # quotes only around text


def _pattern_message(pattern: str, value: Any) -> str:
    if pattern == SLUG:
        return _("'{value}' is not a valid id: use letters, digits, '-' and '_' (at most 40, no spaces)").format(value=value)
    if pattern == IDENT:
        return _("'{value}' is not a valid id here: use lowercase letters, digits and '_', starting with a letter (it is used in copy as lever.<id>)").format(value=value)
    if pattern.startswith("^SMS_"):
        return _("'{value}' is not an Aliyun template code; they look like SMS_123456789").format(value=value)
    if pattern == COLOUR:
        return _("'{value}' is not a colour; write #RRGGBB, e.g. #FFFFFF").format(value=value)
    if pattern.startswith("^https?"):
        return _("'{value}' is not a link; it must start with https:// or http://").format(value=value)
    return _("'{value}' does not have the expected form {pattern}").format(value=value, pattern=pattern)


_CUSTOM = {**TIME_TEMPLATES, **MODEL_TEMPLATES}  # our own error types -> their msgid


def _message(error: Any) -> tuple[str, str]:
    """(code, message) for one pydantic error, in the current language."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    loc = error["loc"]
    if kind == "missing":
        return "missing", _("missing '{field}'").format(field=loc[-1])
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        known = _field_names(model) if model else []
        hint = did_you_mean(str(loc[-1]), known) or (
            " " + _("(known here: {known})").format(known=", ".join(known)) if known else ""
        )
        return "unknown-key", _("unknown key '{key}'").format(key=loc[-1]) + hint
    if kind in _CUSTOM:
        return kind.replace("_", "-"), _(_CUSTOM[kind]).format(**ctx)
    if kind in ("string_type",):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return "type", _("expected text, got the number {value}; put it in quotes: \"{value}\"").format(value=value)
        return "type", _("expected text, got {value}").format(value=_show(value))
    if kind == "int_parsing_size":
        return "range", _("the number {value} is far too large").format(value=_show(value))
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "type", _("expected a whole number, got {value}").format(value=_show(value))
    if kind in ("bool_type", "bool_parsing"):
        return "type", _("expected true or false, got {value}").format(value=_show(value))
    if kind in ("list_type", "tuple_type"):
        return "type", _("expected a list (lines starting with '- '), got {value}").format(value=_show(value))
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "type", _("expected a mapping (key: value lines), got {value}").format(value=_show(value))
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace("'", "")
        choices = [c.strip() for c in expected.replace(" or ", ",").split(",") if c.strip()]
        return "choice", _("{value} is not allowed here; choose one of: {choices}").format(
            value=_show(value), choices=", ".join(choices)) + did_you_mean(str(value), choices)
    if kind in ("greater_than_equal", "greater_than"):
        return "range", _("must be at least {limit}, got {value}").format(limit=ctx.get("ge", ctx.get("gt")), value=_show(value))
    if kind in ("less_than_equal", "less_than"):
        return "range", _("must be at most {limit}, got {value}").format(limit=ctx.get("le", ctx.get("lt")), value=_show(value))
    if kind == "string_too_short":
        return "empty", _("must not be empty")
    if kind == "string_too_long":
        return "too-long", _("is longer than {limit} characters").format(limit=ctx.get("max_length"))
    if kind == "too_short":
        return "too-few", _("needs at least {limit} item(s)").format(limit=ctx.get("min_length"))
    if kind == "string_pattern_mismatch":
        return "pattern", _pattern_message(str(ctx.get("pattern", "")), value)
    return kind.replace("_", "-"), str(error.get("msg", kind))


def pydantic_diagnostics(exc: ValidationError, located: Located, prefix: Path_ = ()) -> list[Diagnostic]:
    out = []
    for error in exc.errors(include_url=False):
        loc = tuple(p for p in error["loc"] if p != "[key]")
        full = prefix + loc
        code, message = _message({**error, "loc": full})
        if error["type"] == "missing":
            line, col = located.key_at(full[:-1]) if full[:-1] else (1, 1)
        elif error["type"] == "extra_forbidden" or "[key]" in error["loc"]:
            line, col = located.key_at(full)
        else:
            line, col = located.value_at(full)
        out.append(Diagnostic(located.file, line, col, code, message))
    return out


# --- loading --------------------------------------------------------------------------------


def read_playbook_text(path: Path, shown: str) -> tuple[str | None, list[Diagnostic]]:
    try:
        if path.is_dir():
            return None, [Diagnostic(shown, 1, 1, "file-missing", _("is a folder, not a playbook file"))]
        data = path.read_bytes()
    except FileNotFoundError:
        return None, [Diagnostic(shown, 1, 1, "file-missing", _("file not found"))]
    except OSError as e:
        return None, [Diagnostic(shown, 1, 1, "file-unreadable", _("cannot read the file: {reason}").format(reason=e.strerror or e))]
    if len(data) > MAX_PLAYBOOK_BYTES:
        return None, [Diagnostic(shown, 1, 1, "too-large", _("the playbook is larger than 5 MB; put members in CSV files"))]
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return None, [Diagnostic(shown, line, 1, "encoding", _("the playbook is not UTF-8 text; save it as UTF-8"))]


def check_playbook(path: str | Path, *, members: bool = True) -> tuple[LoadedPlaybook | None, list[Diagnostic]]:
    """Load and check structure and references; (loaded or None, diagnostics sorted by position)."""
    path = Path(path)
    shown = str(path)
    text, diags = read_playbook_text(path, shown)
    if text is None:
        return None, diags
    return check_text(text, shown, path.parent, members=members)


def check_text(text: str, shown: str, base: Path, *, members: bool = True) -> tuple[LoadedPlaybook | None, list[Diagnostic]]:
    located, diags = parse_yaml(text, shown)
    if located is None:
        return None, diags
    if not isinstance(located.data, dict):
        diags.append(Diagnostic(shown, 1, 1, "not-a-mapping", _("a playbook is a mapping of keys (version, id, title, goal, audience, ...), not {value}").format(value=_show(located.data))))
        return None, sorted_diagnostics(diags)
    try:
        playbook = Playbook.model_validate(located.data)
    except ValidationError as e:
        diags.extend(pydantic_diagnostics(e, located))
        diags.extend(_check_sections_alone(located, shown, base))
        return None, sorted_diagnostics(diags)
    loaded = LoadedPlaybook(shown, base, located, playbook, with_members=members)
    diags.extend(_load_references(loaded))
    return loaded, sorted_diagnostics(diags)


def _check_sections_alone(located: Located, shown: str, base: Path) -> list[Diagnostic]:
    """When the whole model fails, still check the files that valid sections reference."""
    from orchestrator.playbook import Audience, PathPlan

    diags: list[Diagnostic] = []
    data = located.data
    audience = path = None
    try:
        audience = Audience.model_validate(data.get("audience"))
    except ValidationError:
        pass
    try:
        path = PathPlan.model_validate(data.get("path"))
    except ValidationError:
        pass
    if audience is None and path is None:
        return diags
    partial = LoadedPlaybook(shown, base, located, Playbook.model_construct())  # type: ignore[call-arg]  # no valid playbook: only its files are checked
    if audience is not None:
        diags.extend(_load_audience(partial, audience))
    if path is not None:
        diags.extend(_load_path_files(partial, path))
    return diags


def load_playbook(path: str | Path, *, members: bool = True) -> LoadedPlaybook:
    """Load a playbook or raise PlaybookError with every error found (warnings are dropped).

    `members=False` leaves the audience's members out (a worker of a scheduled event reads them
    from the store, a chunk at a time, instead of holding every one of them).
    """
    loaded, diags = check_playbook(path, members=members)
    errors = [d for d in diags if d.is_error]
    if loaded is None or errors:
        raise PlaybookError(errors)
    return loaded


def _ref(loaded: LoadedPlaybook, rel: str, at: Path_) -> tuple[Path | None, list[Diagnostic]]:
    """Resolve a file reference relative to the playbook, or say where it is missing."""
    target = (loaded.base / rel)
    if not target.is_file():
        file, line, col = loaded.at(at)
        return None, [Diagnostic(file, line, col, "file-missing", _("file '{rel}' not found (looked for {path})").format(rel=rel, path=target))]
    return target, []


def _shown(loaded: LoadedPlaybook, target: Path) -> str:
    return str(Path(loaded.file).parent / target.relative_to(loaded.base)) if target.is_relative_to(loaded.base) else str(target)


def _load_references(loaded: LoadedPlaybook) -> list[Diagnostic]:
    pb = loaded.playbook
    diags = _load_audience(loaded, pb.audience)
    diags += _load_path_files(loaded, pb.path)
    diags += _collect_copies(loaded)
    return diags


def _load_audience(loaded: LoadedPlaybook, audience: Any) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    seen_segments: dict[str, int] = {}
    for i, seg in enumerate(audience.segments if loaded.with_members else ()):
        where = ("audience", "segments", i)
        if seg.id in seen_segments:
            file, line, col = loaded.at(where + ("id",))
            diags.append(Diagnostic(file, line, col, "duplicate-id", _("duplicate segment id '{id}' (also segment {n})").format(id=seg.id, n=seen_segments[seg.id] + 1)))
            continue
        seen_segments[seg.id] = i
        if seg.file is not None:
            target, missing = _ref(loaded, seg.file, where + ("file",))
            diags += missing
            if target is None:
                continue
            sheet, sd = read_sheet(target, _shown(loaded, target), seg.encoding, MEMBER_COLUMNS, ("id", "name"))
            diags += sd
            if sheet is None:
                continue
            members, md = members_from_sheet(sheet, seg.id)
            diags += md
        else:
            members = []
            for j, m in enumerate(seg.members or []):
                phone = normalise_phone(m.phone) if m.phone else None
                if m.phone and phone is None:
                    file, line, col = loaded.at(where + ("members", j, "phone"))
                    diags.append(Diagnostic(file, line, col, "bad-phone", _("phone '{value}' is not a mainland mobile number (11 digits starting with 1); this member gets no SMS").format(value=m.phone), Severity.WARNING))
                members.append(Member(
                    id=m.id, name=m.name, segment=seg.id, phone=phone, email=m.email,
                    wecom_external_userid=m.wecom_external_userid, guide=m.guide, tags=tuple(m.tags),
                    consent_sms=m.consent.sms, consent_email=m.consent.email, consent_wecom=m.consent.wecom,
                    where=loaded.at(where + ("members", j))[:2],
                ))
        for m in members:
            first = loaded.members.get(m.id)
            if first is None:
                loaded.members[m.id] = m
            elif first.segment != m.segment:
                loaded.extra_segments.setdefault(m.id, set()).add(m.segment)
    excl = audience.exclusions
    if excl.file is not None:
        target, missing = _ref(loaded, excl.file, ("audience", "exclusions", "file"))
        diags += missing
        if target is not None:
            sheet, sd = read_sheet(target, _shown(loaded, target), excl.encoding, EXCLUDED_COLUMNS, ("id", "name"))
            diags += sd
            if sheet is not None:
                rows, ed = excluded_from_sheet(sheet)
                diags += ed
                loaded.excluded.extend(rows)
    for a in excl.accounts:
        loaded.excluded.append(Excluded(a.id, a.name, a.role, normalise_phone(a.phone) if a.phone else None,
                                        a.wecom_external_userid, tuple(a.live_ids)))
    return diags


def _load_path_files(loaded: LoadedPlaybook, path: Any) -> list[Diagnostic]:
    diags: list[Diagnostic] = []
    poster = path.poster
    target, missing = _ref(loaded, poster.guides, ("path", "poster", "guides"))
    diags += missing
    if target is not None:
        sheet, sd = read_sheet(target, _shown(loaded, target), poster.encoding, GUIDE_COLUMNS, ("id", "name", "channel_code"))
        diags += sd
        if sheet is not None:
            guides, gd = guides_from_sheet(sheet)
            diags += gd
            loaded.guides = guides
    if not poster.layout.background.startswith("#"):
        diags += _ref(loaded, poster.layout.background, ("path", "poster", "layout", "background"))[1]
    for i, code in enumerate(path.join.codes):
        diags += _ref(loaded, code.image, ("path", "join", "codes", i, "image"))[1]
    return diags


def _read_copy_file(loaded: LoadedPlaybook, rel: str, at: Path_) -> tuple[Copy | None, list[Diagnostic]]:
    target, missing = _ref(loaded, rel, at)
    if target is None:
        return None, missing
    shown = _shown(loaded, target)
    try:
        return Copy(target.read_bytes().decode("utf-8-sig"), shown, 1, 1, True), []
    except UnicodeDecodeError:
        return None, [Diagnostic(shown, 1, 1, "encoding", _("the copy file is not UTF-8 text; save it as UTF-8"))]


def _inline_copy(loaded: LoadedPlaybook, text: str, at: Path_) -> Copy:
    block = loaded.located.block_text.get(at)
    if block is not None:
        return Copy(text, loaded.file, block[0], block[1], True)
    file, line, col = loaded.at(at)
    return Copy(text, file, line, col, False)


def _collect_copies(loaded: LoadedPlaybook) -> list[Diagnostic]:
    """Gather every piece of copy with its origin, so checks can point into it."""
    pb = loaded.playbook
    diags: list[Diagnostic] = []
    join = pb.path.join
    if join.welcome is not None:
        loaded.copies[("path", "join", "welcome")] = _inline_copy(loaded, join.welcome, ("path", "join", "welcome"))
    if join.welcome_file is not None:
        copy, d = _read_copy_file(loaded, join.welcome_file, ("path", "join", "welcome_file"))
        diags += d
        if copy:
            loaded.copies[("path", "join", "welcome")] = copy
    messages = ([(("path", "preview"), pb.path.preview)] if pb.path.preview else []) + [
        (("path", "reminders", i), r) for i, r in enumerate(pb.path.reminders)
    ]
    for where, msg in messages:
        if msg.copy_text is not None:
            loaded.copies[where + ("copy",)] = _inline_copy(loaded, msg.copy_text, where + ("copy",))
        elif msg.copy_file is not None:
            copy, d = _read_copy_file(loaded, msg.copy_file, where + ("copy_file",))
            diags += d
            if copy:
                loaded.copies[where + ("copy",)] = copy
        if msg.sms is not None:
            for name, text in msg.sms.params.items():
                at = where + ("sms", "params", name)
                loaded.copies[at] = _inline_copy(loaded, text, at)
        if msg.email is not None:
            at = where + ("email", "subject")
            loaded.copies[at] = _inline_copy(loaded, msg.email.subject, at)
            if msg.email.html_file is not None:
                copy, d = _read_copy_file(loaded, msg.email.html_file, where + ("email", "html_file"))
                diags += d
                if copy:
                    loaded.copies[where + ("email", "html")] = copy
    alerts = pb.support.alerts
    for name in ("draw_soon", "pool_low", "tasks_unconfirmed"):
        text = getattr(alerts, name)
        if text is not None:
            at = ("support", "alerts", name)
            loaded.copies[at] = _inline_copy(loaded, text, at)
    return diags


__all__ = ["Copy", "LoadedPlaybook", "check_playbook", "check_text", "load_playbook", "SECTIONS"]
