"""The planner: (loaded playbook, live start) -> the exact timeline the engine will run.

Pure: no clock, no I/O. Planning the same playbook for the same start gives the same plan.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from enum import Enum
from typing import Any

from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import PER_MEMBER_CHANNELS, Channel, Message, Playbook
from orchestrator.reach import Audience, build_audience
from orchestrator.timespec import QuietHours, TimeSpec


class Stage(str, Enum):
    POSTER = "poster"
    JOIN_OPEN = "join_open"
    PREVIEW = "preview"
    REMINDER = "reminder"
    LIVE_START = "live_start"
    SOP_CUE = "sop_cue"
    STAFF_SCRIPT = "staff_script"
    DRAW_SCREENSHOT = "draw_screenshot"
    DRAW_DEPOSIT = "draw_deposit"
    LIVE_END = "live_end"
    CLOSE = "close"


STAGE_ORDER = {s: i for i, s in enumerate(Stage)}
UTC = timezone.utc
MESSAGE_STAGES = (Stage.PREVIEW, Stage.REMINDER)


@dataclass(frozen=True)
class Step:
    """One thing the engine does at one moment."""

    id: str
    stage: Stage
    at: datetime  # aware, in the event timezone
    label: str
    source: tuple[str | int, ...]  # where in the playbook it comes from
    audience: int = 0
    channels: dict[str, int] = field(default_factory=dict)
    unreachable: int = 0
    groups: bool = False  # also posts to the event's groups (wecom_group)
    in_quiet_hours: bool = False
    quiet_allowed: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stage": self.stage.value,
            "at": self.at.isoformat(),
            "label": self.label,
            "audience": self.audience,
            "channels": self.channels,
            "unreachable": self.unreachable,
            "groups": self.groups,
            "in_quiet_hours": self.in_quiet_hours,
            "quiet_allowed": self.quiet_allowed,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Load:
    """The most messages one person gets from this event in one day or month."""

    per_day: int
    busiest_day: str | None
    per_month: int
    busiest_month: str | None
    wecom_per_month: int
    cap_day: int
    cap_month: int
    wecom_quota: int

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Plan:
    event_id: str
    title: str
    timezone: str
    live_start: datetime
    live_end: datetime
    shift: timedelta
    quiet_hours: QuietHours | None
    audience_total: int
    excluded: int
    steps: tuple[Step, ...]
    load: Load

    def step(self, step_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == step_id), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "event": self.event_id,
            "title": self.title,
            "timezone": self.timezone,
            "live_start": self.live_start.isoformat(),
            "live_end": self.live_end.isoformat(),
            "shift_s": int(self.shift.total_seconds()),
            "quiet_hours": str(self.quiet_hours) if self.quiet_hours else None,
            "audience": self.audience_total,
            "excluded": self.excluded,
            "load": self.load.as_json(),
            "steps": [s.as_json() for s in self.steps],
        }


# Python compares, subtracts and adds datetimes that share one tzinfo by their wall clocks, which
# is wrong across a daylight-saving change; the planner's time arithmetic goes through UTC.


def localize(moment: datetime, tz: tzinfo) -> datetime:
    """`moment` in `tz`; a naive one is `tz`'s wall clock (the earlier of two, in a repeated hour)."""
    aware = moment.replace(tzinfo=tz) if moment.tzinfo is None else moment
    return aware.astimezone(UTC).astimezone(tz)  # normalised: a wall time a DST gap skips moves on


def later(moment: datetime, delta: timedelta) -> datetime:
    """The moment `delta` of elapsed time after `moment`, in the same timezone."""
    return (moment.astimezone(UTC) + delta).astimezone(moment.tzinfo)


def elapsed(start: datetime, end: datetime) -> timedelta:
    """Elapsed time from `start` to `end`."""
    return end.astimezone(UTC) - start.astimezone(UTC)


def whole_hours(start: datetime, end: datetime, tz: tzinfo, *, include_end: bool) -> list[datetime]:
    """Every moment strictly after `start`, up to `end`, at which the event timezone's clock shows a whole hour.

    Stepping through UTC by quarter hours (every offset in use is a multiple of 15 minutes)
    needs no special case: a DST gap has no such moment, and a repeated hour has two.
    """
    t = start.astimezone(UTC).replace(second=0, microsecond=0)
    t -= timedelta(minutes=t.minute % 15)
    end = end.astimezone(UTC)  # `==` across zones is never true in a repeated hour (PEP 495)
    out: list[datetime] = []
    while True:
        t += timedelta(minutes=15)
        if t > end or (t == end and not include_end):
            return out
        local = t.astimezone(tz)
        if local.minute == 0:
            out.append(local)


def days_in_month(d: datetime) -> int:
    nxt = (d.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (nxt - timedelta(days=1)).day


def plan(loaded: LoadedPlaybook, start: datetime | None = None) -> Plan:
    """The exact timeline for the live starting at `start` (default: the playbook's own)."""
    pb = loaded.playbook
    tz = pb.tz
    audience = build_audience(loaded.members.values(), loaded.extra_segments, loaded.excluded)
    original = localize(pb.path.live.start, tz)
    live_start = localize(start, tz) if start is not None else original
    shift = elapsed(original, live_start)
    live_end = later(localize(pb.path.live.end, tz), shift)
    steps = _steps(pb, audience, live_start, live_end, shift, tz)
    steps.sort(key=lambda s: (s.at.astimezone(UTC), STAGE_ORDER[s.stage], s.id))
    return Plan(
        event_id=pb.id, title=pb.title, timezone=pb.timezone, live_start=live_start, live_end=live_end,
        shift=shift, quiet_hours=pb.policy.quiet_hours, audience_total=audience.total,
        excluded=audience.excluded, steps=tuple(steps), load=_load(pb, audience, steps),
    )


def _steps(pb: Playbook, audience: Audience, start: datetime, end: datetime, shift: timedelta, tz: tzinfo) -> list[Step]:
    path = pb.path

    def at(spec: TimeSpec) -> datetime:
        return spec.resolve(start, tz, shift).astimezone(tz)

    poster_at = at(path.poster.at)
    steps = [
        Step("poster", Stage.POSTER, poster_at, "poster", ("path", "poster", "at"),
             detail={"variants": [v.id for v in path.poster.variants]}),
        Step("join:open", Stage.JOIN_OPEN, at(path.join.opens_at) if path.join.opens_at else poster_at, "join",
             ("path", "join", "opens_at") if path.join.opens_at else ("path", "poster", "at"),
             detail={"kind": path.join.kind, "capacity": path.join.capacity, "margin": path.join.margin}),
        Step("live:start", Stage.LIVE_START, start, "live", ("path", "live", "start"),
             detail={"platform": path.live.platform, "room_url": path.live.room_url}),
        Step("live:end", Stage.LIVE_END, end, "live", ("path", "live", "end")),
        Step("close", Stage.CLOSE, later(end, path.live.close_after), "close", ("path", "live", "close_after")),
    ]
    if path.preview is not None:
        steps.append(_message_step(pb, audience, path.preview, "preview", Stage.PREVIEW, ("path", "preview"), at))
    for i, r in enumerate(path.reminders):
        steps.append(_message_step(pb, audience, r, f"reminder:{r.id}", Stage.REMINDER, ("path", "reminders", i), at))
    draw = pb.mechanism.screenshot_draw
    if draw is not None and draw.enabled:
        for n, moment in enumerate(whole_hours(start, end, tz, include_end=draw.include_end), 1):
            steps.append(Step(f"draw:screenshot:{n}", Stage.DRAW_SCREENSHOT, moment, f"draw {n}",
                              ("mechanism", "screenshot_draw"),
                              detail={"number": n, "winners": draw.winners_per_draw, "prize": draw.prize,
                                      "screen_size": draw.screen_size, "keyword": draw.keyword}))
    deposit = pb.mechanism.deposit_draw
    if deposit is not None and deposit.enabled:
        spec = deposit.draw_at or deposit.cutoff
        source = ("mechanism", "deposit_draw", "draw_at" if deposit.draw_at else "cutoff")
        pools = len(deposit.products) if deposit.pools == "per_product" else 1
        steps.append(Step("draw:deposit", Stage.DRAW_DEPOSIT, at(spec), "deposit draw", source,
                          detail={"cutoff": at(deposit.cutoff).isoformat(), "pools": pools,
                                  "winners": deposit.winners * pools, "prize": deposit.prize,
                                  "products": [p.id for p in deposit.products]}))
    for i, cue in enumerate(pb.support.sop):
        steps.append(Step(f"sop:{i + 1}", Stage.SOP_CUE, later(start, timedelta(minutes=cue.minute)), cue.cue,
                          ("support", "sop", i), detail={"minute": cue.minute}))
    for i, script in enumerate(pb.support.staff_scripts):
        if script.minute is not None:
            steps.append(Step(f"script:{script.id}", Stage.STAFF_SCRIPT, later(start, timedelta(minutes=script.minute)),
                              script.lines[0], ("support", "staff_scripts", i),
                              detail={"minute": script.minute, "lines": list(script.lines)}))
    return steps


def _message_step(pb: Playbook, audience: Audience, msg: Message, step_id: str, stage: Stage,
                  source: tuple[str | int, ...], at: Callable[[TimeSpec], datetime]) -> Step:
    moment = at(msg.at)
    channels: Counter[str] = Counter()
    unreachable = 0
    per_member = [c for c in msg.channels if c in PER_MEMBER_CHANNELS]
    if per_member:
        for profile, n in audience.targeted(msg.segments):
            ch = profile.first_channel(per_member)
            if ch is None:
                unreachable += n
            else:
                channels[ch.value] += n
    quiet = pb.policy.quiet_hours
    in_quiet = quiet is not None and quiet.contains(moment.timetz().replace(tzinfo=None))
    return Step(step_id, stage, moment, msg.id, source + ("at",),
                audience=sum(channels.values()), channels=dict(sorted(channels.items())),
                unreachable=unreachable, groups=Channel.WECOM_GROUP in msg.channels,
                in_quiet_hours=in_quiet, quiet_allowed=msg.quiet_hours == "allow",
                detail={"segments": msg.segments, "channels": [c.value for c in msg.channels]})


def _load(pb: Playbook, audience: Audience, steps: list[Step]) -> Load:
    """Messages per person against the caps, worst profile first."""
    messages = [s for s in steps if s.stage in MESSAGE_STAGES]
    source_of = {("preview" if s.stage is Stage.PREVIEW else s.id): s for s in messages}
    msgs = ([(source_of["preview"], pb.path.preview)] if pb.path.preview else []) + [
        (source_of[f"reminder:{r.id}"], r) for r in pb.path.reminders
    ]
    worst_day: tuple[int, str | None] = (0, None)
    worst_month: tuple[int, str | None] = (0, None)
    worst_wecom = 0
    for profile in audience.profiles:
        per_day: Counter[str] = Counter()
        per_month: Counter[str] = Counter()
        wecom: Counter[str] = Counter()
        for step, msg in msgs:
            if msg.segments is not None and not profile.segments & set(msg.segments):
                continue
            ch = profile.first_channel([c for c in msg.channels if c in PER_MEMBER_CHANNELS])
            month = f"{step.at:%Y-%m}"
            if ch is not None:
                per_day[f"{step.at:%Y-%m-%d}"] += 1
                per_month[month] += 1
            if ch is Channel.WECOM_CUSTOMER or Channel.WECOM_GROUP in msg.channels:
                wecom[month] += 1
        for counter, worst in ((per_day, "day"), (per_month, "month")):
            if counter:
                key, n = max(counter.items(), key=lambda kv: (kv[1], kv[0]))
                if worst == "day" and n > worst_day[0]:
                    worst_day = (n, key)
                if worst == "month" and n > worst_month[0]:
                    worst_month = (n, key)
        if wecom:
            worst_wecom = max(worst_wecom, max(wecom.values()))
    quota = pb.policy.wecom_monthly_quota
    if quota == "days_in_month":
        month_of = messages[0].at if messages else localize(pb.path.live.start, pb.tz)
        quota = days_in_month(month_of)
    return Load(worst_day[0], worst_day[1], worst_month[0], worst_month[1], worst_wecom,
                pb.policy.caps.per_day, pb.policy.caps.per_month, int(quota))


def message_steps(p: Plan) -> list[Step]:
    return [s for s in p.steps if s.stage in MESSAGE_STAGES]


def group_by_day(p: Plan) -> dict[str, list[Step]]:
    days: dict[str, list[Step]] = defaultdict(list)
    for s in p.steps:
        days[f"{s.at:%Y-%m-%d}"].append(s)
    return dict(days)
