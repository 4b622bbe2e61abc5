"""The exact copy one member receives for one step, through the channel that reaches them."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.copytext import render_copy
from orchestrator.errors import CopyFailed, UnknownStep
from orchestrator.i18n import _
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import PER_MEMBER_CHANNELS, Channel, Member, Message
from orchestrator.reach import Profile, reach_bits
from orchestrator.validate import _guide_view, copy_context


@dataclass(frozen=True)
class Rendered:
    step: str
    channel: str | None  # None: the member is not reached by this step
    text: str
    subject: str | None = None
    html: str | None = None
    sms_template: str | None = None
    sms_params: dict[str, str] | None = None
    note: str | None = None


def step_ids(loaded: LoadedPlaybook) -> list[str]:
    pb = loaded.playbook
    ids = (["preview"] if pb.path.preview else []) + [f"reminder:{r.id}" for r in pb.path.reminders]
    if pb.path.join.welcome is not None or pb.path.join.welcome_file is not None:
        ids.append("welcome")
    return ids


def _message(loaded: LoadedPlaybook, step: str) -> tuple[tuple[str | int, ...], Message | None]:
    pb = loaded.playbook
    if step == "preview" and pb.path.preview is not None:
        return ("path", "preview"), pb.path.preview
    for i, r in enumerate(pb.path.reminders):
        if step == f"reminder:{r.id}":
            return ("path", "reminders", i), r
    if step == "welcome" and ("path", "join", "welcome") in loaded.copies:
        return ("path", "join"), None
    raise UnknownStep(_("no step '{step}'; steps with copy: {known}").format(step=step, known=", ".join(step_ids(loaded))))


def render_step(loaded: LoadedPlaybook, step: str, member_id: str | None = None, start: datetime | None = None) -> Rendered:
    """Render `step` for `member_id` (default: the first member); CopyFailed if the copy breaks for them."""
    where, msg = _message(loaded, step)
    member = _member(loaded, member_id)
    try:
        return _render(loaded, where, msg, member, copy_context(loaded, member, start))
    except Exception as e:  # sandbox and template errors alike: the copy cannot be sent to this member
        where_from = f"{member.where[0]}:{member.where[1]}" if member.where[0] else member.id
        raise CopyFailed(_("the copy of {step} fails for member '{id}' ({where}): {reason}").format(
            step=step, id=member.id, where=where_from, reason=e)) from e


def _render(loaded: LoadedPlaybook, where: tuple[str | int, ...], msg: Message | None, member: Member, ctx: dict[str, Any]) -> Rendered:
    if msg is None:
        return Rendered("welcome", "wecom_group", render_copy(loaded.copies[("path", "join", "welcome")].source, ctx))
    text = render_copy(loaded.copies[where + ("copy",)].source, ctx)
    step_id = "preview" if where == ("path", "preview") else f"reminder:{msg.id}"
    if msg.segments is not None and not loaded.segments_of(member) & set(msg.segments):
        return Rendered(step_id, None, text, note=_("member '{id}' is not in the segments this message targets").format(id=member.id))
    profile = Profile(frozenset(loaded.segments_of(member)), reach_bits(member))
    channel = profile.first_channel([c for c in msg.channels if c in PER_MEMBER_CHANNELS])
    if channel is None:
        if Channel.WECOM_GROUP in msg.channels:
            return Rendered(step_id, Channel.WECOM_GROUP.value, text, note=_("posted once into each of the event's groups, not sent to members one by one"))
        note = _("member '{id}' has no consented address for {channels}").format(id=member.id, channels=", ".join(c.value for c in msg.channels))
        return Rendered(step_id, None, text, note=note)
    return _render_channel(loaded, where, msg, step_id, channel, text, ctx)


def render_for(loaded: LoadedPlaybook, step_id: str, member: Member, channel: Channel, start: datetime | None = None) -> Rendered:
    """The copy of `step_id` for `member` through `channel` (chosen by the engine); raises on broken copy."""
    where, msg = _message(loaded, step_id)
    ctx = _member_context(loaded, member, start)
    if msg is None:
        return Rendered("welcome", channel.value, render_copy(loaded.copies[("path", "join", "welcome")].source, ctx))
    text = render_copy(loaded.copies[where + ("copy",)].source, ctx)
    return _render_channel(loaded, where, msg, step_id, channel, text, ctx)


def _render_channel(loaded: LoadedPlaybook, where: tuple[str | int, ...], msg: Message, step_id: str, channel: Channel, text: str, ctx: dict[str, Any]) -> Rendered:
    if channel is Channel.SMS and msg.sms is not None:
        params = {k: render_copy(loaded.copies[where + ("sms", "params", k)].source, ctx) for k in msg.sms.params}
        filled = re.sub(r"\$\{(\w+)\}", lambda m: params.get(m.group(1), m.group(0)), msg.sms.text)
        return Rendered(step_id, channel.value, f"【{msg.sms.sign}】{filled}", sms_template=msg.sms.template_code, sms_params=params)
    if channel is Channel.EMAIL:
        subject = render_copy(loaded.copies[where + ("email", "subject")].source, ctx) if msg.email else loaded.playbook.title
        html_copy = loaded.copies.get(where + ("email", "html"))
        html = render_copy(html_copy.source, ctx, html=True) if html_copy else None
        return Rendered(step_id, channel.value, text, subject=subject, html=html)
    return Rendered(step_id, channel.value, text)


_BASES: dict[tuple[int, datetime | None], tuple[LoadedPlaybook, dict[str, Any] | None]] = {}
_BASES_LOCK = threading.Lock()


def _member_context(loaded: LoadedPlaybook, member: Member, start: datetime | None) -> dict[str, Any]:
    """`copy_context(loaded, member, start)`, without working out the same event view for every person.

    The parts no person changes are worked out once per (playbook, start); each call gets its own
    copies of them (a template cannot change what the next person sees) and its own member and
    guide. The shortcut is checked against `copy_context` for a few members when first built and
    is not used if any differs (say copy_context learns another per-person name).
    """
    key = (id(loaded), start)
    entry = _BASES.get(key)
    if entry is None or entry[0] is not loaded:
        entry = (loaded, _base_context(loaded, start))
        with _BASES_LOCK:
            if len(_BASES) >= 16:
                _BASES.clear()
            _BASES[key] = entry
    base = entry[1]
    return copy_context(loaded, member, start) if base is None else _with_member(base, loaded, member)


def _with_member(base: dict[str, Any], loaded: LoadedPlaybook, member: Member) -> dict[str, Any]:
    ctx = {k: dict(v) if type(v) is dict else v for k, v in base.items()}
    ctx["member"] = {"id": member.id, "name": member.name, "segment": member.segment, "tags": list(member.tags)}
    ctx["guide"] = _guide_view(loaded, member)
    return ctx


def _base_context(loaded: LoadedPlaybook, start: datetime | None) -> dict[str, Any] | None:
    base = copy_context(loaded, None, start)
    samples = list(loaded.members.values())
    for m in samples[:2] + samples[-1:]:
        if _with_member(base, loaded, m) != copy_context(loaded, m, start):
            return None
    return base


def _member(loaded: LoadedPlaybook, member_id: str | None) -> Member:
    if member_id is None:
        first = next(iter(loaded.members.values()), None)
        if first is None:
            raise UnknownStep(_("the audience is empty; there is nobody to render for"))
        return first
    member = loaded.members.get(member_id)
    if member is None:
        raise UnknownStep(_("no member '{id}' in the audience").format(id=member_id))
    return member
