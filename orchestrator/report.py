"""The closing report: what was sent, per step, channel and outcome, as CSV and as a page with charts.

The page is one self-contained HTML file (inline SVG, no scripts or fonts from anywhere).
The funnel shows what the engine knows by itself (reached, reminded); scans, joins, live
entries and orders join it when the path and the board's ingestion exist.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine, func, select

from orchestrator import eventlog, ledger
from orchestrator.scheduling import STEP, get_event
from orchestrator.store import Send

SEND = Send.__table__  # type: ignore[attr-defined]
STATES = ("sent", "failed", "unknown", "skipped", "planned", "sending")
COLOURS = {"sent": "#2e7d32", "failed": "#c62828", "unknown": "#f9a825", "skipped": "#90a4ae", "planned": "#5c6bc0", "sending": "#8e24aa"}


@dataclass(frozen=True)
class Bar:
    label: str
    segments: list[tuple[str, int, float, float, str]]  # state, count, x, width, colour
    total: int


def _bars(rows: list[tuple[str, dict[str, int]]], width: float) -> list[Bar]:
    biggest = max((sum(c.values()) for _l, c in rows), default=0) or 1
    out = []
    for label, counts in rows:
        x = 0.0
        segs = []
        for state in STATES:
            n = counts.get(state, 0)
            if n:
                w = width * n / biggest
                segs.append((state, n, x, w, COLOURS[state]))
                x += w
        out.append(Bar(label, segs, sum(counts.values())))
    return out


def report_data(engine: Engine, event_id: str, state: str | None = None) -> dict[str, Any]:
    ev = get_event(engine, event_id)
    if state is not None:
        ev.state = state
    counts = ledger.step_counts(engine, event_id)
    with engine.connect() as conn:
        steps = conn.execute(select(STEP).where(STEP.c.event_id == event_id).order_by(STEP.c.at, STEP.c.step_id)).all()
        reminded = conn.execute(select(func.count(func.distinct(SEND.c.member_id))).where(
            SEND.c.event_id == event_id, SEND.c.state == "sent", SEND.c.step_id.notin_(("poster", "welcome")))).scalar_one()
    rows = []
    for s in steps:
        for channel, states in sorted(counts.get(s.step_id, {}).items()):
            rows.append({"step": s.step_id, "stage": s.stage, "at": s.at.isoformat(), "channel": channel,
                         **{state: states.get(state, 0) for state in STATES}})
    for channel, states in sorted(counts.get("welcome", {}).items()):  # welcomes follow joins, not a step of the timeline
        rows.append({"step": "welcome", "stage": "join", "at": "", "channel": channel, **{state: states.get(state, 0) for state in STATES}})
    per_step: dict[str, dict[str, int]] = {}
    for r in rows:
        agg = per_step.setdefault(r["step"], {})
        for state in STATES:
            agg[state] = agg.get(state, 0) + r[state]
    return {
        "event": ev, "rows": rows,
        "steps": [{"id": s.step_id, "stage": s.stage, "at": s.at.astimezone(_tz(ev.timezone)), "state": s.state, "note": s.note} for s in steps],
        "bars": _bars(list(per_step.items()), 600.0),
        "funnel": _bars([("reached (audience)", {"sent": ev.audience}), ("reminded (delivered)", {"sent": reminded})], 600.0),
        "live_start": ev.live_start.astimezone(_tz(ev.timezone)), "live_end": ev.live_end.astimezone(_tz(ev.timezone)),
        "log": eventlog.entries(engine, event_id, limit=500),
        "colours": COLOURS,
    }


def _tz(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def write_report(engine: Engine, event_id: str, directory: Path, state: str | None = None) -> tuple[Path, Path]:
    """Write `<event>-report.html` and `<event>-sends.csv` into `directory` (`state`: the event's, as of the report)."""
    data = report_data(engine, event_id, state)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / f"{event_id}-sends.csv"
    with csv_path.open("w", newline="", encoding="utf-8-sig") as fh:  # with BOM: opens cleanly in Excel
        w = csv.DictWriter(fh, fieldnames=["step", "stage", "at", "channel", *STATES])
        w.writeheader()
        w.writerows(data["rows"])
    env = Environment(loader=PackageLoader("orchestrator", "templates"), autoescape=select_autoescape(["html", "j2"]))
    html_path = directory / f"{event_id}-report.html"
    html_path.write_text(env.get_template("report.html.j2").render(**data, csv_name=csv_path.name), encoding="utf-8")
    return html_path, csv_path
