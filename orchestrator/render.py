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
from orchestrator.validate import copy_context


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
    sms_sign: str | None = None  # the approved sign name (签名) the platform puts in front of the text


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
    return step_renderer(loaded, step_id, start).render(member, channel)


def _render_channel(loaded: LoadedPlaybook, where: tuple[str | int, ...], msg: Message, step_id: str, channel: Channel, text: str, ctx: dict[str, Any]) -> Rendered:
    if channel is Channel.SMS and msg.sms is not None:
        params = {k: render_copy(loaded.copies[where + ("sms", "params", k)].source, ctx) for k in msg.sms.params}
        filled = re.sub(r"\$\{(\w+)\}", lambda m: params.get(m.group(1), m.group(0)), msg.sms.text)
        return Rendered(step_id, channel.value, f"【{msg.sms.sign}】{filled}", sms_template=msg.sms.template_code, sms_params=params,
                        sms_sign=msg.sms.sign)
    if channel is Channel.EMAIL:
        subject = render_copy(loaded.copies[where + ("email", "subject")].source, ctx) if msg.email else loaded.playbook.title
        html_copy = loaded.copies.get(where + ("email", "html"))
        html = render_copy(html_copy.source, ctx, html=True) if html_copy else None
        return Rendered(step_id, channel.value, text, subject=subject, html=html)
    return Rendered(step_id, channel.value, text)


class StepRenderer:
    """One step's copy, rendered person after person (a fan-out renders it thousands of times).

    What no person changes (the message, the event view, the lever) is worked out once; each
    person adds only their own `member` and `guide`. Copy runs in an immutable sandbox, so the
    shared parts cannot be changed by one person's rendering for the next. The shortcut is checked
    against `copy_context` for a few members when built and is not used if any differs (say
    copy_context learns another per-person name).
    """

    def __init__(self, loaded: LoadedPlaybook, step_id: str, start: datetime | None) -> None:
        self.loaded = loaded
        self.step_id = step_id
        self.start = start
        self.where, self.msg = _message(loaded, step_id)
        self.guides = {g.id: g for g in loaded.guides}
        self.base = self._base()

    def context(self, member: Member) -> dict[str, Any]:
        if self.base is None:
            return copy_context(self.loaded, member, self.start)
        guide = self.guides.get(member.guide) if member.guide is not None else None
        return {**self.base,
                "member": {"id": member.id, "name": member.name, "segment": member.segment, "tags": list(member.tags)},
                "guide": None if guide is None else {"id": guide.id, "name": guide.name, "channel_code": guide.channel_code,
                                                     "contact_code": guide.contact_code or ""}}

    def render(self, member: Member, channel: Channel) -> Rendered:
        ctx = self.context(member)
        if self.msg is None:
            return Rendered("welcome", channel.value, render_copy(self.loaded.copies[("path", "join", "welcome")].source, ctx))
        text = render_copy(self.loaded.copies[self.where + ("copy",)].source, ctx)
        return _render_channel(self.loaded, self.where, self.msg, self.step_id, channel, text, ctx)

    def group_text(self) -> str:
        """The one text a message posts into every group: its copy without a person (`member`'s fields are empty, `guide` is none)."""
        if self.msg is None:
            raise UnknownStep("the welcome is sent to people, not posted into groups")
        ctx = copy_context(self.loaded, None, self.start)
        ctx["member"] = {"id": "", "name": "", "segment": "", "tags": []}  # copy that greets a person says nobody's name here (a warning at validate)
        return render_copy(self.loaded.copies[self.where + ("copy",)].source, ctx)

    def _base(self) -> dict[str, Any] | None:
        base = copy_context(self.loaded, None, self.start)
        self.base = base
        samples = list(self.loaded.members.values())
        for m in samples[:2] + samples[-1:]:
            if self.context(m) != copy_context(self.loaded, m, self.start):
                return None
        return base


_RENDERERS: dict[tuple[int, str, datetime | None], StepRenderer] = {}
_RENDERERS_LOCK = threading.Lock()


def step_renderer(loaded: LoadedPlaybook, step_id: str, start: datetime | None = None) -> StepRenderer:
    """The renderer of `step_id` for this frozen playbook, built once and kept (a few at a time)."""
    key = (id(loaded), step_id, start)
    renderer = _RENDERERS.get(key)
    if renderer is None or renderer.loaded is not loaded:
        renderer = StepRenderer(loaded, step_id, start)
        with _RENDERERS_LOCK:
            if len(_RENDERERS) >= 32:
                _RENDERERS.clear()
            _RENDERERS[key] = renderer
    return renderer


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
