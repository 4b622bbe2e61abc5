"""Cross-field rules of a loaded playbook: times, ids, platform limits, policy and the law.

`validate(loaded, start)` is pure and returns every finding; the loader already reported
syntax, structure, types and unreadable files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from orchestrator.copytext import (
    ALERT_NAMES,
    AUDIENCE_NAMES,
    GROUP_NAMES,
    IncentiveView,
    check_copy,
    event_view,
    render_copy,
    used_names,
)
from orchestrator.diagnostics import Diagnostic, Severity, did_you_mean, sorted_diagnostics
from orchestrator.i18n import _
from orchestrator.load import Copy, LoadedPlaybook, check_playbook
from orchestrator.plan import MESSAGE_STAGES, UTC, Plan, Stage, elapsed, later, localize, plan
from orchestrator.playbook import PER_MEMBER_CHANNELS, SHOW_MINUTES, Channel, Member, Playbook
from orchestrator.timespec import FIRST_YEAR, LAST_YEAR
from orchestrator.yamlsource import Path_

PRIZE_LIMIT_CNY = 50_000
WECOM_TEXT_BYTES = 4000
ROBOT_TEXT_BYTES = 2048
WECOM_GROUP_CAPACITY = 500
WECHAT_GROUP_CAPACITY = 200
JOIN_WAY_GROUPS = 5
JOIN_WAY_STATE = 30
ROOM_BASE_NAME = 40
AB_SAMPLE_PER_ARM = 1000
MAX_LIVE = timedelta(minutes=SHOW_MINUTES)
OPT_OUT = re.compile(r"(回复?\s*(TD|T|N|R|退订)\s*(退订|拒收)?)|(拒收请回复\s*R)|(退订回\s*T)|(reply\s+(STOP|TD))", re.I)
SMS_PARAM = re.compile(r"\$\{(\w+)\}")
COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")
SOURCE_PLATFORM = {"bilibili_open_live": "bilibili", "douyin_push": "douyin", "wxlivespy": "wechat_channels"}


class _Findings:
    def __init__(self, loaded: LoadedPlaybook) -> None:
        self.loaded = loaded
        self.items: list[Diagnostic] = []

    def error(self, path: Path_, code: str, message: str, *, key: bool = False) -> None:
        self.add(path, code, message, Severity.ERROR, key=key)

    def warn(self, path: Path_, code: str, message: str, *, key: bool = False) -> None:
        self.add(path, code, message, Severity.WARNING, key=key)

    def add(self, path: Path_, code: str, message: str, severity: Severity, *, key: bool = False) -> None:
        file, line, col = self.loaded.key_at(path) if key else self.loaded.at(path)
        self.items.append(Diagnostic(file, line, col, code, message, severity))

    def at_copy(self, copy: Copy, line: int, code: str, message: str, severity: Severity = Severity.ERROR) -> None:
        if copy.block:
            self.items.append(Diagnostic(copy.file, copy.line + line - 1, copy.col, code, message, severity))
        else:
            self.items.append(Diagnostic(copy.file, copy.line, copy.col, code, message, severity))


def check(path: str | Path, start: datetime | None = None) -> tuple[LoadedPlaybook | None, list[Diagnostic]]:
    """Everything `orchestrator validate` reports for one file: loading, then the cross-field rules.

    The rules run whenever the model itself is valid, even if a referenced CSV has bad rows,
    so one run shows all of a file's problems. `start` may be naive (event timezone).
    """
    loaded, diags = check_playbook(path)
    if loaded is None:
        return None, diags
    if start is not None:
        start = localize(start, loaded.playbook.tz)
    return loaded, sorted_diagnostics(diags + validate(loaded, start))


def validate(loaded: LoadedPlaybook, start: datetime | None = None) -> list[Diagnostic]:
    """Every cross-field finding, sorted by position, for the live starting at `start`."""
    f = _Findings(loaded)
    pb = loaded.playbook
    _ids(f, pb)
    _references(f, pb, loaded)
    _live(f, pb)
    _mechanism(f, pb)
    _join(f, pb, loaded)
    _poster(f, pb)
    _messages(f, pb)
    _copies(f, loaded)
    _audience(f, pb, loaded)
    if start is not None and not FIRST_YEAR <= start.year <= LAST_YEAR:
        f.error(("path", "live", "start"), "start-year", _("cannot plan a live starting {start}: the year must be between 2000 and 2199").format(
            start=_fmt(start)))
    elif _times_usable(pb):
        _timeline(f, pb, plan(loaded, start))
    return sorted_diagnostics(f.items)


def _times_usable(pb: Playbook) -> bool:
    tz = pb.tz
    length = elapsed(localize(pb.path.live.start, tz), localize(pb.path.live.end, tz))
    return timedelta(0) < length <= MAX_LIVE


def _fmt(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M}"


# --- ids and references ---------------------------------------------------------------------


def _dupes(f: _Findings, items: list[Any], where: Path_, what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            f.error(where + (i, "id"), "duplicate-id", _("duplicate {what} id '{id}' (first is item {n})").format(
                what=what, id=item.id, n=seen[item.id] + 1))
        else:
            seen[item.id] = i


def _ids(f: _Findings, pb: Playbook) -> None:
    _dupes(f, pb.lever.incentives, ("lever", "incentives"), _("incentive"))
    _dupes(f, pb.mechanism.prizes, ("mechanism", "prizes"), _("prize"))
    _dupes(f, pb.path.poster.variants, ("path", "poster", "variants"), _("variant"))
    _dupes(f, pb.path.reminders, ("path", "reminders"), _("reminder"))
    _dupes(f, pb.support.staff_scripts, ("support", "staff_scripts"), _("staff script"))
    if pb.mechanism.deposit_draw is not None:
        _dupes(f, pb.mechanism.deposit_draw.products, ("mechanism", "deposit_draw", "products"), _("product"))
    for i, seg in enumerate(pb.audience.segments):
        if seg.members is not None:
            _dupes(f, seg.members, ("audience", "segments", i, "members"), _("member"))
    _dupes(f, pb.audience.exclusions.accounts, ("audience", "exclusions", "accounts"), _("account"))


def _references(f: _Findings, pb: Playbook, loaded: LoadedPlaybook) -> None:
    prizes = [p.id for p in pb.mechanism.prizes]
    for name in ("screenshot_draw", "deposit_draw"):
        draw = getattr(pb.mechanism, name)
        if draw is not None and draw.prize not in prizes:
            f.error(("mechanism", name, "prize"), "unknown-prize", _("prize '{id}' is not in mechanism.prizes").format(
                id=draw.prize) + (did_you_mean(draw.prize, prizes) or " " + _("(known: {known})").format(known=", ".join(prizes) or "-")))
    segments = [s.id for s in pb.audience.segments]
    for where, msg in all_messages(pb):
        for j, seg in enumerate(msg.segments or []):
            if seg not in segments:
                f.error(where + ("segments", j), "unknown-segment", _("segment '{id}' is not in audience.segments").format(
                    id=seg) + (did_you_mean(seg, segments) or " " + _("(known: {known})").format(known=", ".join(segments))))


def all_messages(pb: Playbook) -> Iterator[tuple[Path_, Any]]:
    """(path in the playbook, message) of the preview and each reminder."""
    if pb.path.preview is not None:
        yield ("path", "preview"), pb.path.preview
    for i, r in enumerate(pb.path.reminders):
        yield ("path", "reminders", i), r


# --- live, mechanism, join ------------------------------------------------------------------


def _live(f: _Findings, pb: Playbook) -> None:
    live = pb.path.live
    tz = pb.tz
    start, end = localize(live.start, tz), localize(live.end, tz)
    length = elapsed(start, end)
    if length <= timedelta(0):
        f.error(("path", "live", "end"), "live-end-before-start", _("the live ends ({end}) before it starts ({start}); the end must be later").format(
            end=_fmt(end), start=_fmt(start)))
    elif length > MAX_LIVE:
        f.error(("path", "live", "end"), "live-too-long", _("the live would last {days} days; a live lasts at most 7 days: is the end date right?").format(
            days=length.days))
    elif length > timedelta(hours=12):
        f.warn(("path", "live", "end"), "live-long", _("the live lasts {hours} hours; is the end date right?").format(
            hours=int(length.total_seconds() // 3600)))
    expected = SOURCE_PLATFORM.get(live.comment_source)
    if expected is not None and expected != live.platform:
        f.error(("path", "live", "comment_source"), "comment-source-platform", _("comment source '{source}' only works on {platform}, but the live is on {actual}").format(
            source=live.comment_source, platform=expected, actual=live.platform))


def _mechanism(f: _Findings, pb: Playbook) -> None:
    m = pb.mechanism
    for i, prize in enumerate(m.prizes):
        if prize.value_cny > PRIZE_LIMIT_CNY:
            f.error(("mechanism", "prizes", i, "value_cny"), "prize-over-limit", _(
                "prize '{id}' is worth CNY {value:,}; the Anti-Unfair Competition Law caps a lottery prize at CNY 50,000").format(id=prize.id, value=prize.value_cny))
    draws = [d for d in (m.screenshot_draw, m.deposit_draw) if d is not None and d.enabled]
    if not draws:
        return
    notice = pb.mechanism.notice
    where: Path_ = ("mechanism", "notice") if "notice" in m.model_fields_set else ("mechanism",)
    for name in ("eligibility", "method", "redemption", "organiser"):
        if getattr(notice, name) is None:
            f.error(where, "notice-missing", _("the public notice (公示) lacks '{field}'; promotion rules require it to be published before a draw").format(field=name), key=True)
    if m.screenshot_draw is not None and m.screenshot_draw.keyword is not None and not m.screenshot_draw.keyword.strip():
        f.error(("mechanism", "screenshot_draw", "keyword"), "empty", _("must not be empty"))


def _join(f: _Findings, pb: Playbook, loaded: LoadedPlaybook) -> None:
    join = pb.path.join
    w: Path_ = ("path", "join")
    limit = WECOM_GROUP_CAPACITY if join.kind == "wecom_join_way" else WECHAT_GROUP_CAPACITY
    if join.capacity > limit:
        why = _("WeCom customer groups hold at most 500") if join.kind == "wecom_join_way" else _("an ordinary WeChat group stops accepting QR joins at about 200 members")
        f.error(w + ("capacity",), "group-capacity", _("capacity {value} is too large: {why}").format(value=join.capacity, why=why))
    if join.margin >= join.capacity:
        f.error(w + ("margin",), "group-margin", _("margin {margin} must be below capacity {capacity}: the code rotates before a group is full (e.g. {suggest})").format(
            margin=join.margin, capacity=join.capacity, suggest=max(1, join.capacity * 95 // 100)))
    if "{n}" not in join.group_name:
        f.error(w + ("group_name",), "group-name", _("group_name needs '{{n}}' for the group number, e.g. '{example}'").format(example=join.group_name + "{n}"))
    if join.kind == "wecom_join_way":
        if len(join.group_name.replace("{n}", "")) > ROOM_BASE_NAME:
            f.error(w + ("group_name",), "group-name", _("WeCom allows at most 40 characters in a group base name"))
        if join.groups_per_join_way > JOIN_WAY_GROUPS:
            f.error(w + ("groups_per_join_way",), "join-way-groups", _("a WeCom join way holds at most 5 groups, not {value}").format(value=join.groups_per_join_way))
        longest = max((g.channel_code for g in loaded.guides), key=len, default="")
        if len(join.state_prefix) + len(longest) > JOIN_WAY_STATE:
            f.error(w + ("state_prefix",), "join-state-too-long", _("join way state '{state}' would be {n} characters; WeCom allows 30").format(
                state=join.state_prefix + longest, n=len(join.state_prefix) + len(longest)))
        if len(join.chat_ids) > join.groups_per_join_way:
            f.error(w + ("chat_ids",), "join-way-groups", _("{n} chat ids, but a join way here holds {limit} groups (groups_per_join_way)").format(
                n=len(join.chat_ids), limit=join.groups_per_join_way))
        elif not join.chat_ids:
            f.warn(w + ("kind",), "join-no-chats", _("no WeCom group chat ids yet: a join way starts from groups made in the WeCom app; list them under path.join.chat_ids"))
        if join.codes:
            f.error(w + ("codes",), "join-codes-kind", _("'codes' are uploaded WeChat group codes; they need kind: wechat_group_codes"), key=True)
    else:
        if join.chat_ids:
            f.error(w + ("chat_ids",), "join-codes-kind", _("'chat_ids' are WeCom groups; they need kind: wecom_join_way"), key=True)
        if not join.codes:
            f.warn(w + ("kind",), "join-no-codes", _("no group codes yet: add them under path.join.codes before the join opens"))
    if join.welcome is not None and join.welcome_file is not None:
        f.error(w + ("welcome_file",), "one-copy", _("give the welcome copy once: 'welcome' or 'welcome_file', not both"), key=True)


def _poster(f: _Findings, pb: Playbook) -> None:
    layout = pb.path.poster.layout
    where: Path_ = ("path", "poster", "layout")
    if layout.background.startswith("#") and not COLOUR.match(layout.background):
        f.error(where + ("background",), "colour", _("'{value}' is not a colour; write #RRGGBB, e.g. #C8102E").format(value=layout.background))
    incentives = [i.id for i in pb.lever.incentives]
    for j, ref in enumerate(layout.incentives or []):
        if ref not in incentives:
            f.error(where + ("incentives", j), "unknown-incentive", _("incentive '{id}' is not in lever.incentives").format(
                id=ref) + (did_you_mean(ref, incentives) or " " + _("(known: {known})").format(known=", ".join(incentives))))
    for j, channel in enumerate(pb.path.poster.channels or []):
        if channel in (Channel.WECOM_GROUP, Channel.WECOM_CUSTOMER):  # WeCom tasks go from a guide to customers, never to a guide
            f.error(("path", "poster", "channels", j), "poster-channel", _(
                "posters go to guides, and {channel} reaches customers only: use email, sms, webhook (your own relay, e.g. to a WeCom bot) or console"
            ).format(channel=channel.value))


def _messages(f: _Findings, pb: Playbook) -> None:
    for where, msg in all_messages(pb):
        if len(set(msg.channels)) != len(msg.channels):
            f.error(where + ("channels",), "duplicate-channel", _("a channel is listed twice"))
        if Channel.WECOM_GROUP in msg.channels and pb.path.join.kind == "wechat_group_codes":
            f.warn(where + ("channels", msg.channels.index(Channel.WECOM_GROUP)), "group-post-wechat-groups", _(
                "WeCom posts only into WeCom customer groups, and this event's groups come from WeChat group codes: through WeCom "
                "this message reaches no group (route wecom_group to your webhook, or post it by hand)"))
        if Channel.SMS in msg.channels and msg.sms is None:
            f.error(where + ("channels", msg.channels.index(Channel.SMS)), "sms-template-missing", _(
                "SMS needs an approved template: add sms: {{sign, template_code, text, params}}").format())
        if msg.sms is not None:
            sms = msg.sms
            if Channel.SMS not in msg.channels:
                f.warn(where + ("sms",), "sms-unused", _("an sms template is given but 'sms' is not among the channels"), key=True)
            if sms.marketing and not OPT_OUT.search(sms.text):
                f.error(where + ("sms", "text"), "sms-opt-out", _("a marketing SMS must tell people how to refuse; end the template with e.g. '回复TD退订' or '拒收请回复R'"))
            used = set(SMS_PARAM.findall(sms.text))
            for name in sorted(used - set(sms.params)):
                f.error(where + ("sms", "text"), "sms-params", _("template parameter '${{{name}}}' has no value in params").format(name=name))
            for name in sorted(set(sms.params) - used):
                f.error(where + ("sms", "params", name), "sms-params", _("param '{name}' is not in the template text; the platform rejects extra parameters").format(name=name), key=True)


# --- copy -----------------------------------------------------------------------------------


def _guide_view(loaded: LoadedPlaybook, member: Member | None) -> dict[str, Any] | None:
    guide = next((g for g in loaded.guides if member is not None and g.id == member.guide), None)
    if guide is None:
        return None
    return {"id": guide.id, "name": guide.name, "channel_code": guide.channel_code, "contact_code": guide.contact_code or ""}


def copy_context(loaded: LoadedPlaybook, member: Member | None, start: datetime | None = None) -> dict[str, Any]:
    """What copy sees for `member`: the same context the engine renders with."""
    pb = loaded.playbook
    tz = pb.tz
    s = localize(start, tz) if start else localize(pb.path.live.start, tz)
    e = later(localize(pb.path.live.end, tz), elapsed(localize(pb.path.live.start, tz), s))
    return {
        "member": None if member is None else {"id": member.id, "name": member.name, "segment": member.segment, "tags": list(member.tags)},
        "event": event_view(pb.id, pb.title, s, e, pb.path.live.room_url, pb.path.live.platform),
        "group": {"name": pb.path.join.group_name.replace("{n}", "1"), "number": 1},
        "guide": _guide_view(loaded, member),
        "lever": {i.id: IncentiveView(i.name, i.copy_text) for i in pb.lever.incentives},
        "draw": {"number": 1, "time_text": "20:00", "winners": 3, "prize": pb.mechanism.prizes[0].name if pb.mechanism.prizes else ""},
        "pool": {"remaining": 10, "group": pb.path.join.group_name.replace("{n}", "1")},
        "tasks": {"count": 2, "guides": "—"},
    }


def _samples(loaded: LoadedPlaybook) -> list[Member]:
    """A few members that between them exercise optional data: one per segment, one without a guide."""
    picked: dict[str, Member] = {}
    no_guide: Member | None = None
    for m in loaded.members.values():
        picked.setdefault(m.segment, m)
        if no_guide is None and m.guide is None:
            no_guide = m
        if len(picked) >= 8 and no_guide is not None:
            break
    out = list(picked.values())
    if no_guide is not None and no_guide not in out:
        out.append(no_guide)
    return out


def _template_line(e: Exception) -> int:
    """The template line an error happened on: jinja2 sets `lineno`, other errors carry it in the traceback."""
    if isinstance(e, TemplateError):
        return getattr(e, "lineno", None) or 1
    tb = e.__traceback__
    line = 1
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _channels_for(path: Path_, pb: Playbook) -> list[Channel]:
    if path[:2] == ("path", "preview") and pb.path.preview:
        return list(pb.path.preview.channels)
    if path[:2] == ("path", "reminders"):
        return list(pb.path.reminders[int(path[2])].channels)
    return []


def _copies(f: _Findings, loaded: LoadedPlaybook) -> None:
    pb = loaded.playbook
    incentive_ids = tuple(i.id for i in pb.lever.incentives)
    samples = _samples(loaded)
    for path, copy in loaded.copies.items():
        alert = path[:2] == ("support", "alerts")
        names: tuple[str, ...] = ALERT_NAMES if alert else AUDIENCE_NAMES
        if path[-1] == "copy" and _groups_only(_channels_for(path, pb)):
            names = GROUP_NAMES
            personal = sorted(used_names(copy.source) & {"member", "guide"})
            for name in personal:
                f.at_copy(copy, 1, "copy-personal-in-group", _(
                    "this message only goes into groups (wecom_group), where one text reaches everyone: its copy cannot use '{name}'").format(name=name))
            if personal:
                continue
        if path[-1] == "copy" and Channel.WECOM_GROUP in _channels_for(path, pb):  # also posted into groups, as one text
            for name in sorted(used_names(copy.source) & {"member", "guide"}):
                f.at_copy(copy, 1, "copy-personal-in-group-post", _(
                    "this message is also posted into the groups (wecom_group) as one text for everyone, where '{name}' is empty; "
                    "greet them all alike, or post a message of its own into the groups").format(name=name), Severity.WARNING)
        if path[-1] == "copy" and Channel.WECOM_CUSTOMER in _channels_for(path, pb) and "member" in used_names(copy.source):
            f.at_copy(copy, 1, "copy-personal-in-wecom-task", _(
                "WeCom sends a guide's mass message as one text to all their customers: copy that uses 'member' makes a task per "
                "customer, each confirmed by the guide in the app; greet them all alike (e.g. '亲爱的老客'), or leave wecom_customer out"),
                Severity.WARNING)
        problems = check_copy(copy.source, names, incentive_ids)
        for p in problems:
            f.at_copy(copy, p.line, p.code, p.message)
        if problems:
            continue
        html = path[-1] == "html"
        members: list[Member | None] = [None] if alert or not samples else list(samples)
        for member in members:
            try:
                text = render_copy(copy.source, copy_context(loaded, member), html=html)
            except Exception as e:  # copy is a small program: whatever it raises (TypeError, ...) is the author's to fix
                who = _("member '{id}' ({where})").format(id=member.id, where=f"{member.where[0]}:{member.where[1]}") if member else _("the sample")
                hint = " " + _("(not every member has a guide: wrap it in {{% if guide %}}...{{% endif %}})").format() if "guide" in str(e) or "None" in str(e) else ""
                f.at_copy(copy, _template_line(e), "copy-render", _("copy fails for {who}: {reason}").format(who=who, reason=e) + hint)
                break
            size = len(text.encode("utf-8"))
            if alert and size > ROBOT_TEXT_BYTES:
                f.at_copy(copy, 1, "robot-text-too-long", _("a WeCom robot text may be {limit} bytes; this one is {size}").format(limit=ROBOT_TEXT_BYTES, size=size))
                break
            if set(_channels_for(path, pb)) & {Channel.WECOM_CUSTOMER, Channel.WECOM_GROUP} and path[-1] == "copy" and size > WECOM_TEXT_BYTES:
                f.at_copy(copy, 1, "wecom-text-too-long", _("a WeCom mass message may be {limit} bytes; this one is {size}").format(limit=WECOM_TEXT_BYTES, size=size))
                break


def _groups_only(channels: list[Channel]) -> bool:
    return Channel.WECOM_GROUP in channels and not any(c in PER_MEMBER_CHANNELS for c in channels)


# --- audience -------------------------------------------------------------------------------


def _audience(f: _Findings, pb: Playbook, loaded: LoadedPlaybook) -> None:
    variants = len(pb.path.poster.variants)
    if variants > 1 and pb.audience.expected_reach // variants < AB_SAMPLE_PER_ARM:
        f.warn(("path", "poster", "variants"), "ab-sample", _(
            "{n} variants share an expected reach of {reach}: fewer than 1,000 people per arm, so the A/B result will not be conclusive").format(
            n=variants, reach=pb.audience.expected_reach), key=True)
    kpi = pb.goal.kpi
    funnel = [("reached", kpi.reached), ("scanned", kpi.scanned), ("joined", kpi.joined), ("entered_live", kpi.entered_live), ("commented", kpi.commented)]
    last: tuple[str, int] | None = None
    for name, value in funnel:
        if value is None:
            continue
        if last is not None and value > last[1]:
            f.warn(("goal", "kpi", name), "kpi-funnel", _("target {name} {value} is larger than {previous} {before}; a funnel narrows").format(
                name=name, value=value, previous=last[0], before=last[1]))
        last = (name, value)
    guide_ids = {g.id for g in loaded.guides}
    unknown = [m for m in loaded.members.values() if m.guide is not None and m.guide not in guide_ids]
    if loaded.guides and unknown:
        first = unknown[0]
        f.items.append(Diagnostic(first.where[0], first.where[1], 1, "unknown-guide", _(
            "{n} member(s) name a guide that is not in the guides file, first '{id}'").format(n=len(unknown), id=first.guide), Severity.WARNING))


# --- the timeline ---------------------------------------------------------------------------


def _timeline(f: _Findings, pb: Playbook, p: Plan) -> None:
    start, end = p.live_start, p.live_end
    # compared in UTC: datetimes of one zone compare by wall clock, wrong in a repeated hour
    start_utc, end_utc = start.astimezone(UTC), end.astimezone(UTC)
    for step in p.steps:
        if step.stage in MESSAGE_STAGES:
            if step.at >= start_utc:
                f.error(step.source, "message-after-live", _("{what} at {at} is not before the live starts ({start}); messages lead up to the live").format(
                    what=step.id, at=_fmt(step.at), start=_fmt(start)))
            if step.in_quiet_hours and not step.quiet_allowed:
                f.error(step.source, "quiet-hours", _("{what} at {at} falls in quiet hours {window}; move it or set quiet_hours: allow on it").format(
                    what=step.id, at=f"{step.at:%H:%M}", window=p.quiet_hours))
            elif step.in_quiet_hours:
                f.warn(step.source, "quiet-hours-allowed", _("{what} at {at} goes out in quiet hours {window} (allowed on this message)").format(
                    what=step.id, at=f"{step.at:%H:%M}", window=p.quiet_hours))
            if step.audience == 0 and not step.groups:
                f.warn(step.source, "reaches-nobody", _("{what} reaches nobody: no member has consent and an address for its channels").format(what=step.id))
            elif step.unreachable:
                f.warn(step.source, "unreachable", _("{what}: {n} member(s) have no consented channel among {channels}").format(
                    what=step.id, n=step.unreachable, channels=", ".join(step.detail["channels"])))
        elif step.stage in (Stage.POSTER, Stage.JOIN_OPEN) and step.at >= start_utc:
            if step.stage is Stage.JOIN_OPEN and pb.path.join.opens_at is None:
                continue  # the join opens with the poster, whose error already says it
            f.error(step.source, "path-after-live", _("{what} at {at} is not before the live starts ({start})").format(
                what=step.id, at=_fmt(step.at), start=_fmt(start)))
        elif step.stage is Stage.DRAW_DEPOSIT and not start_utc <= step.at <= end_utc:
            f.error(step.source, "draw-outside-live", _("the deposit draw at {at} is outside the live ({start} to {end})").format(
                at=_fmt(step.at), start=_fmt(start), end=f"{end:%H:%M}"))
        elif step.stage in (Stage.SOP_CUE, Stage.STAFF_SCRIPT) and step.at > end_utc:
            f.error(step.source + ("minute",), "cue-after-show", _("minute {minute} is after the show ends (it lasts {length} minutes)").format(
                minute=step.detail["minute"], length=int(elapsed(start, end).total_seconds() // 60)))
    deposit = pb.mechanism.deposit_draw
    draw_step = p.step("draw:deposit")
    if deposit is not None and deposit.enabled and draw_step is not None:
        cutoff = datetime.fromisoformat(draw_step.detail["cutoff"])
        if cutoff > draw_step.at:
            f.error(("mechanism", "deposit_draw", "cutoff"), "cutoff-after-draw", _("the cut-off {cutoff} is after the draw {at}; deposits must close before the draw").format(
                cutoff=_fmt(cutoff), at=_fmt(draw_step.at)))
    shot = pb.mechanism.screenshot_draw
    if shot is not None and shot.enabled and not any(s.stage is Stage.DRAW_SCREENSHOT for s in p.steps):
        f.error(("mechanism", "screenshot_draw"), "no-whole-hour", _("the live ({start} to {end}) contains no whole hour, so the hourly draw never runs").format(
            start=_fmt(start), end=f"{end:%H:%M}"), key=True)
    join_open = p.step("join:open")
    for i, code in enumerate(pb.path.join.codes):
        expires = localize(code.expires, pb.tz)  # a real code expires when it expires, wherever the live moves
        if join_open is not None and expires.astimezone(UTC) <= join_open.at:
            f.error(("path", "join", "codes", i, "expires"), "code-expired", _("group code '{name}' expires {at}, before the join opens ({open}); upload a fresh code").format(
                name=code.name, at=_fmt(expires), open=_fmt(join_open.at)))
        elif expires.astimezone(UTC) < end:
            f.warn(("path", "join", "codes", i, "expires"), "code-expires-early", _("group code '{name}' expires {at}, before the live ends; replace it in time").format(
                name=code.name, at=_fmt(expires)))
    _caps(f, pb, p)
    _same_minute(f, p)


def _caps(f: _Findings, pb: Playbook, p: Plan) -> None:
    load = p.load
    if load.per_day > load.cap_day:
        f.error(("policy", "caps", "per_day"), "caps-day", _("on {day} one person would get {n} messages, more than the cap of {cap} a day").format(
            day=load.busiest_day, n=load.per_day, cap=load.cap_day), key="caps" not in pb.policy.model_fields_set)
    if load.per_month > load.cap_month:
        f.error(("policy", "caps", "per_month"), "caps-month", _("in {month} one person would get {n} messages, more than the cap of {cap} a month").format(
            month=load.busiest_month, n=load.per_month, cap=load.cap_month), key="caps" not in pb.policy.model_fields_set)
    if load.wecom_per_month > load.wecom_quota:
        f.error(("policy", "wecom_monthly_quota"), "wecom-quota", _("{n} WeCom mass messages reach one customer in a month; WeCom allows {quota}").format(
            n=load.wecom_per_month, quota=load.wecom_quota), key="wecom_monthly_quota" not in pb.policy.model_fields_set)


def _same_minute(f: _Findings, p: Plan) -> None:
    seen: dict[datetime, str] = {}
    for step in p.steps:
        if step.stage in MESSAGE_STAGES:
            at = step.at.astimezone(UTC)
            if at in seen:
                f.warn(step.source, "same-time", _("{what} goes out at the same moment as {other}; people get two messages at once").format(
                    what=step.id, other=seen[at]))
            seen.setdefault(at, step.id)


