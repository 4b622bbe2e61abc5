"""The plan as a picture: one self-contained HTML page, the timeline drawn in inline SVG.

Geometry is pure: `overview(plan)` (the whole event, days wide) and `live_zoom(plan)` (the live,
minute by minute) turn a plan into shapes; `templates/timeline.html.j2` only draws them. The page
fetches nothing (no scripts, fonts, styles or images from anywhere): it is shared as one file.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined

from orchestrator.copytext import WEEKDAYS_ZH
from orchestrator.i18n import _, current_language
from orchestrator.load import LoadedPlaybook
from orchestrator.plan import STAGE_ORDER, Plan, Stage, Step
from orchestrator.table import stage_label

WIDTH, LEFT, RIGHT = 1200.0, 136.0, 24.0  # SVG user units; LEFT holds the lane names
AXIS_H, MARK_H, ROW_H, FONT = 44.0, 26.0, 15.0, 11.0
LANE_OF = {
    Stage.POSTER: "path", Stage.JOIN_OPEN: "path", Stage.PREVIEW: "messages", Stage.REMINDER: "messages",
    Stage.LIVE_START: "live", Stage.LIVE_END: "live", Stage.CLOSE: "live", Stage.DRAW_SCREENSHOT: "draws",
    Stage.DRAW_DEPOSIT: "draws", Stage.SOP_CUE: "support", Stage.STAFF_SCRIPT: "support",
}
ZOOM_LANE_OF = {**LANE_OF, Stage.SOP_CUE: "sop", Stage.STAFF_SCRIPT: "scripts"}
SHAPE = {
    Stage.POSTER: "square", Stage.JOIN_OPEN: "square", Stage.PREVIEW: "circle", Stage.REMINDER: "circle",
    Stage.LIVE_START: "bar", Stage.LIVE_END: "bar", Stage.CLOSE: "square", Stage.DRAW_SCREENSHOT: "diamond",
    Stage.DRAW_DEPOSIT: "diamond", Stage.SOP_CUE: "tick", Stage.STAFF_SCRIPT: "circle",
}
ZOOM_MARGIN = timedelta(hours=1)  # steps this close to the live are drawn in the zoom too


@dataclass(frozen=True)
class Scale:
    start: datetime
    end: datetime

    def x(self, moment: datetime) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * ((moment - self.start) / (self.end - self.start))


@dataclass(frozen=True)
class Mark:
    """One step drawn: its shape at (x, y), its tooltip, and maybe a label with a leader line."""
    step: Step
    x: float
    y: float
    shape: str
    tip: str
    label: str = ""
    label_x: float = 0.0
    label_y: float = 0.0
    leader: bool = True


@dataclass(frozen=True)
class Span:
    """A shaded stretch of time: a quiet-hours night, the live window, or a calendar day."""
    kind: str
    start: datetime
    end: datetime
    x0: float
    x1: float
    label: str = ""
    sub: str = ""
    label_x: float = 0.0


@dataclass(frozen=True)
class Tick:
    x: float
    text: str
    major: bool


@dataclass(frozen=True)
class Lane:
    key: str
    name: str
    y: float
    height: float


@dataclass(frozen=True)
class Panel:
    scale: Scale
    height: float
    lanes: tuple[Lane, ...]
    spans: tuple[Span, ...]
    ticks: tuple[Tick, ...]
    marks: tuple[Mark, ...]
    live: Span
    foot: tuple[Tick, ...] = ()  # minutes of the show, under the zoom


def text_width(text: str, size: float = FONT) -> float:
    """Rough rendered width: CJK characters are square, Latin ones about 0.6 em."""
    return sum(size if unicodedata.east_asian_width(c) in "WF" else size * 0.6 for c in text)


def clip(text: str, limit: float) -> str:
    out = ""
    for c in text:
        if text_width(out + c + "…") > limit:
            return out + "…"
        out += c
    return out


def hm(moment: datetime) -> str:
    return f"{moment:%H:%M}"


def day_name(day: date) -> str:
    if current_language() == "zh":
        return f"{day.month}月{day.day}日 周{WEEKDAYS_ZH[day.weekday()]}"
    return f"{day:%a %d %b}"


def tooltip(s: Step) -> str:
    return f"{s.at:%Y-%m-%d %H:%M} · {stage_label(s.stage)} · {s.label} ({s.id})"


def _place(items: list[tuple[float, str]], max_rows: int) -> list[tuple[int, float] | None]:
    """Greedy label rows: for each (x, text) in x order, (row, text left) or None when no row has room."""
    ends: list[float] = []
    out: list[tuple[int, float] | None] = []
    for x, text in items:
        if not text:
            out.append(None)
            continue
        w = text_width(text)
        left = min(x + 4, WIDTH - RIGHT - w)
        row = next((r for r, end in enumerate(ends) if left >= end + 10), None)
        if row is None and len(ends) < max_rows:
            ends.append(0.0)
            row = len(ends) - 1
        if row is None:
            out.append(None)
            continue
        ends[row] = left + w
        out.append((row, left))
    return out


def _panel(scale: Scale, steps: list[Step], lane_of: dict[Stage, str], keys: tuple[str, ...],
           labels: dict[str, str], summaries: dict[str, str], max_rows: int) -> tuple[tuple[Lane, ...], tuple[Mark, ...], float]:
    """Lanes stacked under the axis, each step a mark in its lane; labels in rows under the marks
    (or one summary beside a lane's marks). Returns the lanes, the marks in time order, the bottom."""
    names = {"path": _("poster & groups"), "messages": _("messages"), "live": _("live"), "draws": _("draws"),
             "support": _("host & staff"), "sop": _("host cues"), "scripts": _("staff scripts")}
    y = AXIS_H + 4
    lanes: list[Lane] = []
    marks: list[Mark] = []
    for key in keys:
        mine = [Mark(s, scale.x(s.at), y + MARK_H / 2, SHAPE[s.stage], tooltip(s)) for s in steps if lane_of[s.stage] == key]
        rows = 0
        if key in summaries and mine:
            text, w = summaries[key], text_width(summaries[key])
            right = max(m.x for m in mine) + 10
            left = right if right + w <= WIDTH - RIGHT else max(LEFT + 4, min(m.x for m in mine) - 10 - w)
            mine[0] = replace(mine[0], label=text, label_x=left, label_y=y + MARK_H / 2 + 4, leader=False)
        elif mine:
            for i, spot in enumerate(_place([(m.x, labels.get(m.step.id, "")) for m in mine], max_rows)):
                if spot is not None:
                    rows = max(rows, spot[0] + 1)
                    mine[i] = replace(mine[i], label=labels[mine[i].step.id], label_x=spot[1],
                                      label_y=y + MARK_H + ROW_H * (spot[0] + 1) - 2)
        lanes.append(Lane(key, names[key], y, MARK_H + rows * ROW_H + 8))
        marks.extend(mine)
        y += lanes[-1].height
    marks.sort(key=lambda m: (m.step.at, STAGE_ORDER[m.step.stage], m.step.id))
    return tuple(lanes), tuple(marks), y


def _quiet(p: Plan, scale: Scale, tz: ZoneInfo) -> list[Span]:
    """Quiet hours on every calendar day the axis touches (a night runs into the next day), clipped."""
    q = p.quiet_hours
    out: list[Span] = []
    day = scale.start.astimezone(tz).date() - timedelta(days=1)
    while q is not None and day <= scale.end.astimezone(tz).date():
        a = datetime.combine(day, q.start, tzinfo=tz)
        b = datetime.combine(day + timedelta(days=1) if q.end <= q.start else day, q.end, tzinfo=tz)
        a, b = max(a, scale.start), min(b, scale.end)
        if a < b:
            out.append(Span("quiet", a, b, scale.x(a), scale.x(b), _("quiet hours {window}").format(window=q)))
        day += timedelta(days=1)
    return out


def _days(p: Plan, scale: Scale, tz: ZoneInfo, centred: bool) -> list[Span]:
    """Calendar days on the axis, named as room allows, with their distance from the live day."""
    out: list[Span] = []
    day = scale.start.astimezone(tz).date()
    while (a := datetime.combine(day, time(0), tzinfo=tz)) < scale.end:
        a, b = max(a, scale.start), min(datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz), scale.end)
        x0, x1 = scale.x(a), scale.x(b)
        n = (day - p.live_start.date()).days
        name = next((t for t in (day_name(day), f"{day.day}") if text_width(t, 12) + 12 < x1 - x0), "")
        sub = (_("live day") if n == 0 else f"T{n:+d}d") if text_width(name + " T-10d", 12) + 12 < x1 - x0 else ""
        out.append(Span("day", a, b, x0, x1, name, sub, (x0 + x1) / 2 if centred else x0 + 6))
        day += timedelta(days=1)
    return out


def _summaries(p: Plan) -> dict[str, str]:
    """What the overview writes beside the live's crowded lanes (the zoom shows them one by one)."""
    n = {st: sum(s.stage is st for s in p.steps) for st in Stage}
    close = p.step("close")
    live = _("live {start}–{end}").format(start=hm(p.live_start), end=hm(p.live_end))
    draws = [_("hourly draws: {n}").format(n=n[Stage.DRAW_SCREENSHOT])] if n[Stage.DRAW_SCREENSHOT] else []
    draws += [_("deposit draw {time}").format(time=hm(s.at)) for s in p.steps if s.stage is Stage.DRAW_DEPOSIT]
    support = [_("host cues: {n}").format(n=n[Stage.SOP_CUE])] if n[Stage.SOP_CUE] else []
    support += [_("staff scripts: {n}").format(n=n[Stage.STAFF_SCRIPT])] if n[Stage.STAFF_SCRIPT] else []
    return {"live": " · ".join([live] + ([_("close {time}").format(time=hm(close.at))] if close else [])),
            "draws": " · ".join(draws), "support": " · ".join(support)}


def overview(p: Plan) -> Panel:
    """The whole event, poster to close, on an axis of whole days in the event timezone."""
    tz = ZoneInfo(p.timezone)
    first, last = p.steps[0].at.date(), p.steps[-1].at.date()
    scale = Scale(datetime.combine(first, time(0), tzinfo=tz), datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz))
    day_px = (WIDTH - LEFT - RIGHT) / ((last - first).days + 1)
    every = 3 if day_px >= 360 else 6 if day_px >= 150 else 12
    ticks, moment = [], scale.start
    while moment <= scale.end:
        ticks.append(Tick(scale.x(moment), f"{moment.hour:02d}" if moment.hour and day_px >= 80 else "", moment.hour == 0))
        moment = (moment.replace(tzinfo=None) + timedelta(hours=every)).replace(tzinfo=tz)
    named = (Stage.POSTER, Stage.JOIN_OPEN, Stage.PREVIEW)
    labels = {s.id: f"{hm(s.at)} {stage_label(s.stage) if s.stage in named else s.label}" for s in p.steps}
    lanes, marks, bottom = _panel(scale, list(p.steps), LANE_OF, ("path", "messages", "live", "draws", "support"),
                                  labels, _summaries(p), max_rows=3)
    live = Span("live", p.live_start, p.live_end, scale.x(p.live_start), scale.x(p.live_end))
    return Panel(scale, bottom + 6, lanes, (*_days(p, scale, tz, True), *_quiet(p, scale, tz), live), tuple(ticks), marks, live)


def _zoom_label(s: Step) -> str:
    if s.stage is Stage.DRAW_SCREENSHOT:
        return _("draw {n}").format(n=s.detail["number"])
    if s.stage in (Stage.SOP_CUE, Stage.STAFF_SCRIPT):
        return clip(s.label, 150)
    if s.stage in (Stage.PREVIEW, Stage.REMINDER):
        return f"{hm(s.at)} {s.label}"
    return f"{stage_label(s.stage)} {hm(s.at)}"


def live_zoom(p: Plan) -> Panel:
    """The live itself, minute by minute, with whatever happens within an hour of it."""
    tz = ZoneInfo(p.timezone)
    steps = [s for s in p.steps if p.live_start - ZOOM_MARGIN <= s.at <= p.live_end + ZOOM_MARGIN]
    first, last = min(s.at for s in steps), max(s.at for s in steps)
    pad = max(timedelta(minutes=8), (last - first) * 0.025)
    scale = Scale(first - pad, last + pad)
    minutes = (scale.end - scale.start).total_seconds() / 60
    step_min = next((m for m in (5, 10, 15, 30, 60, 120) if minutes / m <= 26), 240)
    px = (WIDTH - LEFT - RIGHT) * step_min / minutes
    ticks, moment = [], scale.start.replace(minute=0, second=0, microsecond=0)
    while moment <= scale.end:
        if moment >= scale.start:
            ticks.append(Tick(scale.x(moment), hm(moment) if moment.minute == 0 or px >= 44 else "", moment.minute == 0))
        moment += timedelta(minutes=step_min)
    foot_min = max(step_min, 15 if px >= 30 else 30)
    length = int((p.live_end.astimezone(UTC) - p.live_start.astimezone(UTC)).total_seconds() // 60)  # real minutes across DST
    foot = tuple(Tick(scale.x(p.live_start + timedelta(minutes=m)), f"{m}′", m % 60 == 0) for m in range(0, length + 1, foot_min))
    keys = tuple(k for k in ("messages", "path", "live", "draws", "sop", "scripts") if any(ZOOM_LANE_OF[s.stage] == k for s in steps))
    lanes, marks, bottom = _panel(scale, steps, ZOOM_LANE_OF, keys, {s.id: _zoom_label(s) for s in steps}, {}, max_rows=6)
    live = Span("live", p.live_start, p.live_end, scale.x(p.live_start), scale.x(p.live_end))
    return Panel(scale, bottom + 24, lanes, (*_days(p, scale, tz, False), *_quiet(p, scale, tz), live), tuple(ticks), marks, live, foot)


def notes(s: Step) -> list[str]:
    """What the table says about a step beyond its time, people and channels."""
    d, out = s.detail, []
    if s.in_quiet_hours:
        out.append(_("in quiet hours (allowed)") if s.quiet_allowed else _("IN QUIET HOURS"))
    if s.unreachable:
        out.append(_("{n} unreachable").format(n=s.unreachable))
    if s.stage is Stage.POSTER:
        out.append(_("hook variants: {ids}").format(ids=", ".join(d["variants"])))
    elif s.stage is Stage.JOIN_OPEN:
        out.append(_("{kind}, {capacity} per group, next group at {margin}").format(**d))
    elif s.stage in (Stage.PREVIEW, Stage.REMINDER) and d.get("segments"):
        out.append(_("segments: {ids}").format(ids=", ".join(d["segments"])))
    elif s.stage is Stage.LIVE_START:
        out.append(_("on {platform}: {url}").format(platform=d["platform"], url=d.get("room_url") or "-"))
    elif s.stage is Stage.DRAW_SCREENSHOT:
        out.append(_("{n} winners from the last {screen} comments").format(n=d["winners"], screen=d["screen_size"]))
        if d.get("keyword"):
            out.append(_("keyword: {keyword}").format(keyword=d["keyword"]))
    elif s.stage is Stage.DRAW_DEPOSIT:
        out.append(_("{n} winners; cut-off {cutoff}").format(n=d["winners"], cutoff=d["cutoff"][11:16]))
        out.append(_("products: {ids}").format(ids=", ".join(d["products"])))
    elif s.stage is Stage.SOP_CUE:
        out.append(_("minute {m} of the show").format(m=d["minute"]))
    elif s.stage is Stage.STAFF_SCRIPT:
        out.append(_("minute {m}; shown to staff, never sent").format(m=d["minute"]))
        out.extend(f"“{line}”" for line in d["lines"][1:])
    return out


def table_rows(p: Plan) -> list[dict[str, Any]]:
    """The step table: a heading row per day, then one row per step."""
    rows: list[dict[str, Any]] = []
    for s in p.steps:
        if not rows or rows[-1]["day"] != s.at.date():
            rows.append({"day": s.at.date(), "heading": day_name(s.at.date()) + f" · {s.at:%Y-%m-%d}"})
        channels = [f"{k} {v:,}" for k, v in s.channels.items()] + ([_("all groups")] if s.groups else [])
        rows.append({"day": s.at.date(), "step": s, "time": hm(s.at), "stage": stage_label(s.stage),
                     "people": f"{s.audience:,}" if s.audience else "", "channels": channels, "notes": notes(s),
                     "warn": s.in_quiet_hours and not s.quiet_allowed})
    return rows


def meters(p: Plan) -> list[dict[str, Any]]:
    """Messages per person against the caps, as bars."""
    load = p.load
    items = [
        (_("most messages to one person in one day"), load.per_day, _("cap {n}"), load.cap_day, load.busiest_day),
        (_("most messages to one person in one month"), load.per_month, _("cap {n}"), load.cap_month, load.busiest_month),
        (_("WeCom mass messages per customer this month"), load.wecom_per_month, _("quota {n}"), load.wecom_quota, None),
    ]
    return [{"name": name, "n": n, "cap": limit.format(n=cap), "when": when, "state": "over" if n > cap else "full" if n == cap else "ok",
             "pct": min(100.0, 100.0 * n / cap) if cap else 100.0} for name, n, limit, cap, when in items]


@cache
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("orchestrator", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals.update(_=_, stage_label=stage_label, day_name=day_name, hm=hm)
    return env


def render_timeline(p: Plan, loaded: LoadedPlaybook) -> str:
    """The page as text (pure: same plan, same language, same page)."""
    stages = sorted({s.stage for s in p.steps} - {Stage.LIVE_END}, key=list(Stage).index)
    names = {**{s: stage_label(s) for s in stages}, Stage.LIVE_START: _("live starts / ends")}
    return _environment().get_template("timeline.html.j2").render(
        plan=p, playbook=loaded.playbook, guides=len(loaded.guides), lang=current_language(),
        overview=overview(p), zoom=live_zoom(p), rows=table_rows(p), meters=meters(p),
        legend=[(s, SHAPE[s], names[s]) for s in stages], geom={"width": WIDTH, "left": LEFT, "right": RIGHT, "axis": AXIS_H, "mark": MARK_H},
        count={st.value: sum(s.stage is st for s in p.steps) for st in Stage}, file=Path(loaded.file).name,
    )


def write_timeline(p: Plan, loaded: LoadedPlaybook, path: Path) -> Path:
    """Write the page to `path` (UTF-8); the path written."""
    path.write_text(render_timeline(p, loaded), encoding="utf-8")
    return path
