"""The plan and the findings as terminal text: tables whose Chinese columns line up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.copytext import WEEKDAYS_ZH
from orchestrator.diagnostics import Diagnostic
from orchestrator.i18n import _, current_language
from orchestrator.plan import Plan, Stage

STAGE_STYLE = {
    Stage.POSTER: "magenta", Stage.JOIN_OPEN: "magenta", Stage.PREVIEW: "cyan", Stage.REMINDER: "cyan",
    Stage.LIVE_START: "bold green", Stage.LIVE_END: "bold green", Stage.SOP_CUE: "dim",
    Stage.STAFF_SCRIPT: "dim", Stage.DRAW_SCREENSHOT: "yellow", Stage.DRAW_DEPOSIT: "yellow", Stage.CLOSE: "green",
}


def stage_label(stage: Stage) -> str:
    return {
        Stage.POSTER: _("poster"),
        Stage.JOIN_OPEN: _("join opens"),
        Stage.PREVIEW: _("preview"),
        Stage.REMINDER: _("reminder"),
        Stage.LIVE_START: _("live starts"),
        Stage.SOP_CUE: _("host cue"),
        Stage.STAFF_SCRIPT: _("staff script"),
        Stage.DRAW_SCREENSHOT: _("screenshot draw"),
        Stage.DRAW_DEPOSIT: _("deposit draw"),
        Stage.LIVE_END: _("live ends"),
        Stage.CLOSE: _("close and report"),
    }[stage]


def day_label(p: Plan, index: int) -> str:
    at = p.steps[index].at
    if current_language() == "zh":
        return f"{at.month}月{at.day}日 周{WEEKDAYS_ZH[at.weekday()]}"
    return f"{at:%a %d %b %Y}"


def plan_table(p: Plan) -> Table:
    table = Table(title=f"{p.title}  ({p.event_id}, {p.timezone})", title_justify="left", show_lines=False, pad_edge=False)
    table.add_column(_("time"), no_wrap=True)
    table.add_column(_("stage"), no_wrap=True)
    table.add_column(_("step"))
    table.add_column(_("people"), justify="right")
    table.add_column(_("channels"))
    table.add_column(_("notes"))
    last_day = None
    for i, s in enumerate(p.steps):
        day = f"{s.at:%Y-%m-%d}"
        if day != last_day:
            table.add_row(Text(day_label(p, i), style="bold underline"), "", "", "", "", "")
            last_day = day
        notes = []
        if s.in_quiet_hours:
            notes.append(_("in quiet hours (allowed)") if s.quiet_allowed else _("IN QUIET HOURS"))
        if s.unreachable:
            notes.append(_("{n} unreachable").format(n=s.unreachable))
        if s.stage is Stage.DRAW_SCREENSHOT:
            notes.append(_("{n} winners from the last {screen} comments").format(n=s.detail["winners"], screen=s.detail["screen_size"]))
        if s.stage is Stage.DRAW_DEPOSIT:
            notes.append(_("{n} winners; cut-off {cutoff}").format(n=s.detail["winners"], cutoff=s.detail["cutoff"][11:16]))
        channels = ", ".join(f"{k} {v:,}" for k, v in s.channels.items())
        if s.groups:
            channels = (channels + ", " if channels else "") + _("all groups")
        label = s.id if s.stage not in (Stage.SOP_CUE, Stage.STAFF_SCRIPT) else s.label
        table.add_row(
            f"{s.at:%H:%M}", Text(stage_label(s.stage), style=STAGE_STYLE[s.stage]), label,
            f"{s.audience:,}" if s.audience else "", channels, "; ".join(notes),
        )
    return table


def load_lines(p: Plan) -> list[str]:
    load = p.load
    lines = [
        _("audience: {n:,} people after excluding {x} staff and shill accounts").format(n=p.audience_total, x=p.excluded),
        _("messages per person: at most {n} on one day (cap {cap}/day), {m} in one month (cap {mcap}/month)").format(
            n=load.per_day, cap=load.cap_day, m=load.per_month, mcap=load.cap_month),
    ]
    if load.wecom_per_month:
        lines.append(_("WeCom mass messages per customer this month: {n} (quota {quota})").format(n=load.wecom_per_month, quota=load.wecom_quota))
    if p.quiet_hours:
        lines.append(_("quiet hours: {window}").format(window=p.quiet_hours))
    return lines


def print_plan(p: Plan, console: Console) -> None:
    console.print(plan_table(p))
    for line in load_lines(p):
        console.print(line)


def print_diagnostics(diags: Sequence[Diagnostic], console: Console) -> None:
    for d in diags:
        console.print(Text(str(d), style="red" if d.is_error else "yellow"))


STATE_STYLE = {"done": "green", "sending": "cyan", "running": "cyan", "continuing": "cyan", "scheduled": "", "deferred": "yellow",
               "missed": "red", "skipped": "dim", "cancelled": "dim"}


def print_status(data: dict[str, Any], console: Console) -> None:
    """An event's steps with their state and sends, then the sends whose outcome is unknown."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(data["timezone"])
    console.print(Text(f"{data['title']}  ({data['event']})", style="bold"))
    console.print(_("state: {state} · mode: {mode} · playbook {hash} · clock ×{speed:g}, now {now}").format(
        state=data["state"], mode=data["mode"], hash=data["playbook_hash"][:12], speed=data["clock"]["speed"],
        now=datetime.fromisoformat(data["clock"]["now"]).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")))
    if data.get("board_key"):
        console.print(_("host board: {url}").format(url=f"/board/{data['event']}?t={data['board_key']}"))
    promise = data.get("draws") or {}
    if promise.get("commitment"):
        console.print(_("draw commitment (公示): {commitment} · rules {rules}").format(commitment=promise["commitment"], rules=promise["rules_hash"][:16]))
    receipts = any(s.get("sms_receipts") for s in data["steps"])  # the column only when Aliyun pushes delivery receipts
    numbers = (_("sent"), _("failed"), _("unknown"), _("skipped"), _("open"), _("SMS delivered"))
    table = Table(show_edge=False, header_style="bold")
    for title in (_("time"), _("step"), _("state"), _("sent"), _("failed"), _("unknown"), _("skipped"), _("open"),
                  *((_("SMS delivered"),) if receipts else ()), _("note")):
        table.add_column(title, no_wrap=title not in (_("note"),), justify="right" if title in numbers else "left")
    for s in data["steps"]:
        sends = s["sends"]
        open_rows = sends.get("planned", 0) + sends.get("sending", 0)
        got = s.get("sms_receipts") or {}
        delivered = [_("{delivered} of {reported}").format(delivered=got.get("delivered", 0), reported=sum(got.values())) if got else ""]
        table.add_row(
            datetime.fromisoformat(s["at"]).astimezone(tz).strftime("%m-%d %H:%M"), s["id"], Text(s["state"], style=STATE_STYLE.get(s["state"], "")),
            *(str(sends.get(k, "")) if sends.get(k) else "" for k in ("sent", "failed", "unknown", "skipped")),
            str(open_rows) if open_rows else "", *(delivered if receipts else []), s["note"] or "",
        )
    welcomes = data.get("welcomes") or {}
    if welcomes:  # they follow joins, not the timeline
        open_rows = welcomes.get("planned", 0) + welcomes.get("sending", 0)
        table.add_row("", "welcome", "", *(str(welcomes.get(k, "")) if welcomes.get(k) else "" for k in ("sent", "failed", "unknown", "skipped")),
                      str(open_rows) if open_rows else "", *([""] if receipts else []), _("one to each person who joined"))
    console.print(table)
    undelivered = data.get("undelivered") or []
    _listed(console, _("{n} SMS did not reach the phone, as the carrier reported:").format(n=len(undelivered)),
            [f"{u['step_id']}  {u['member_id']}  {u['phone']}  {u['code']}  {u['message'] or ''}" for u in undelivered], 20)
    unknown = data["unknown"]
    _listed(console, _("{n} sends have an unknown outcome (in flight when a worker stopped; not repeated):").format(n=len(unknown)),
            [f"{u['step_id']}  {u['member_id']}  {u['channel']}  {u['idempotency_key']}" for u in unknown], 50)


def _listed(console: Console, title: str, lines: list[str], shown: int) -> None:
    """A warning and its first `shown` lines (nothing when there are none)."""
    if not lines:
        return
    console.print(Text(title, style="bold yellow"))
    for line in lines[:shown]:
        console.print("  " + line)
    if len(lines) > shown:
        console.print(_("  ... and {n} more (--json lists them all)").format(n=len(lines) - shown))
