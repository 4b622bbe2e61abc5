"""The closing report: what was sent, per step, channel and outcome, and, from the board's snapshot,
the whole funnel, KPIs against their targets, per guide, per poster variant, per minute and the draws.

The page is one self-contained HTML file (inline SVG, no scripts or fonts from anywhere). Beside it
go `<event>-sends.csv` (sends per step, channel and state) and `<event>-funnel.csv` (the funnel, GMV,
per guide and per variant rows, told apart by their `section`). Without a snapshot (Redis was not
reachable at close) the page says so and both hold only what the store knows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine, func, select

from orchestrator import draws, eventlog, ledger, smsreceipts
from orchestrator.scheduling import STEP, get_event, loaded_event
from orchestrator.store import Event, Send

SEND = Send.__table__  # type: ignore[attr-defined]
STATES = ("sent", "created", "failed", "unknown", "skipped", "planned", "sending")  # created: a WeCom task not yet confirmed
COLOURS = {"sent": "#2e7d32", "created": "#00897b", "failed": "#c62828", "unknown": "#f9a825", "skipped": "#90a4ae", "planned": "#5c6bc0",
           "sending": "#8e24aa"}
SERIES = {"scanned": "#1565c0", "joined": "#2e7d32"}  # the per-minute chart's series and colours
FUNNEL_FIELDS = ["section", "step", "label", "count", "target", "of_previous", "of_reached", "id", "name", "scanned", "joined", "deposited",
                 "ordered", "gmv_fen", "rate", "enough"]
NICE = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)  # minutes per bucket, and between labels
MINUTE = timedelta(minutes=1)
MAX_BUCKETS = 120  # bars per series in the per-minute chart: longer spans are put in buckets of several minutes


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


def yuan(fen: int) -> str:
    """Integer fen as ¥ with two decimals (¥2,599.00), by integer arithmetic."""
    sign, fen = ("-", -fen) if fen < 0 else ("", fen)
    return f"{sign}¥{fen // 100:,}.{fen % 100:02d}"


def percent(n: int, d: int | None) -> str | None:
    """n of d as a percentage with one decimal, rounded half up by integer arithmetic; None without a d."""
    if not d or d <= 0:
        return None
    sign, n = ("-", -n) if n < 0 else ("", n)
    tenths = (2000 * n + d) // (2 * d)
    return f"{sign}{tenths // 10}.{tenths % 10}%"


def ratio(r: float | None) -> str:
    return "" if r is None else f"{r * 100:.1f}%"


def _kpi_targets(engine: Engine, ev: Event) -> dict[str, Any]:
    kpi: dict[str, Any] = loaded_event(engine, ev, members=False).playbook.goal.kpi.model_dump(mode="json")
    return kpi


def _funnel_rows(board: dict[str, Any] | None, audience: int, reminded: int, kpi: dict[str, Any]) -> list[dict[str, Any]]:
    """The funnel as the board counted it, or what the store knows (reached, reminded) without it."""
    if board is not None:
        rows = [dict(f) for f in board["funnel"]]
    else:
        from orchestrator.board import LABELS

        rows = [{"step": "reached", "label": LABELS["reached"], "count": audience, "target": kpi.get("reached"), "of_previous": None,
                 "of_reached": 1.0 if audience else None},
                {"step": "reminded", "label": LABELS["reminded"], "count": reminded, "target": kpi.get("reminded"),
                 "of_previous": round(reminded / audience, 4) if audience else None, "of_reached": round(reminded / audience, 4) if audience else None}]
    for r in rows:
        target = r.get("target")
        r["of_target"] = percent(r["count"], target)
        r["met"] = None if target is None else r["count"] >= target
    return rows


def _kpis(funnel: list[dict[str, Any]], board: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each KPI with a target (and GMV, with or without one), actual against target."""
    out = [{"name": f"{r['label']} ({r['step']})", "actual": f"{r['count']:,}", "target": f"{r['target']:,}", "of_target": r["of_target"],
            "met": r["met"]} for r in funnel if r.get("target") is not None]
    if board is not None:
        fen = int(board["gmv_fen"])
        target_cny = board.get("gmv_target_cny")
        target_fen = None if target_cny is None else int(target_cny) * 100
        out.append({"name": "GMV", "actual": yuan(fen), "target": "—" if target_fen is None else yuan(target_fen),
                    "of_target": percent(fen, target_fen), "met": None if target_fen is None else fen >= target_fen})
    return out


@dataclass(frozen=True)
class MinuteChart:
    width: int
    height: int
    top: int
    base: int  # the y of the bars' foot
    peak: int  # the count the plot's height stands for
    minutes: int  # minutes per bucket
    left: int  # the x of the plot's left edge
    bar_width: float
    bars: list[tuple[str, float, float, float, str, str]]  # series, x, y, height, colour, tooltip
    labels: list[tuple[float, str]]  # x, the bucket's start in the event's timezone
    totals: dict[str, int]


def _nice(at_least: int) -> int:
    """The first round number of minutes (dividing a day, or whole days) of at least `at_least`."""
    return next((m for m in NICE if m >= at_least), -(-at_least // 1440) * 1440)


def _local_minutes(at: datetime, tz: Any) -> int:
    """Minutes since the epoch on the wall clock of `tz`: a multiple of 60 is a whole hour there."""
    offset = at.astimezone(tz).utcoffset() or timedelta(0)
    return int((at - datetime(1970, 1, 1, tzinfo=UTC) + offset) / MINUTE)


def _minute_chart(per_minute: dict[str, dict[str, int]], timezone: str) -> MinuteChart | None:
    """Scans and joins per minute as grouped bars; minute keys are UTC, labels in the event's timezone."""
    counts = {name: {datetime.strptime(k, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC): n for k, n in per_minute.get(name, {}).items()}
              for name in SERIES}
    moments = sorted(set().union(*counts.values()))
    if not moments:
        return None
    tz = _tz(timezone)
    first, last = moments[0], moments[-1]
    size = _nice(-(-(int((last - first) / MINUTE) + 1) // MAX_BUCKETS))  # minutes per bucket
    first -= MINUTE * (_local_minutes(first, tz) % size)  # buckets start on the clock (a size divides a day)
    n = -(-(int((last - first) / MINUTE) + 1) // size)
    buckets = {name: [0] * n for name in SERIES}
    for name, by_minute in counts.items():
        for at, c in by_minute.items():
            buckets[name][int((at - first) / MINUTE) // size] += c
    width, height, left, top, foot = 900, 240, 48, 24, 40
    base = height - foot
    plot_w, plot_h = width - left - 8, base - top
    peak = max(max(b) for b in buckets.values()) or 1
    slot = plot_w / n
    bar_w = min(24.0, max(1.0, slot * 0.4))
    every = next((m for m in NICE if m >= -(-n * size // 12) and m % size == 0), -(-n * size // (12 * 1440)) * 1440)  # about 12 labels
    bars: list[tuple[str, float, float, float, str, str]] = []
    labels: list[tuple[float, str]] = []
    previous_day = None
    for i in range(n):
        at = first + MINUTE * (i * size)
        start = at.astimezone(tz)
        for j, (name, colour) in enumerate(SERIES.items()):
            c = buckets[name][i]
            h = plot_h * c / peak
            bars.append((name, left + slot * i + j * bar_w, base - h, h, colour, f"{start:%Y-%m-%d %H:%M} {name}: {c}"))
        if _local_minutes(at, tz) % every == 0 or (i == n - 1 and not labels):
            day = start.date()
            labels.append((left + slot * i + bar_w, start.strftime("%m-%d %H:%M" if day != previous_day else "%H:%M")))
            previous_day = day
    return MinuteChart(width, height, top, base, peak, size, left, bar_w, bars, labels, {name: sum(b) for name, b in buckets.items()})


def report_data(engine: Engine, event_id: str, state: str | None = None, board: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the page and the CSV files show; `board`: the event's snapshot (`board.snapshot`), None when it was not available."""
    ev = get_event(engine, event_id)
    if state is not None:
        ev.state = state
    counts = ledger.step_counts(engine, event_id)
    receipts = smsreceipts.delivery(engine, event_id)
    with engine.connect() as conn:
        steps = conn.execute(select(STEP).where(STEP.c.event_id == event_id).order_by(STEP.c.at, STEP.c.step_id)).all()
        reminded = conn.execute(select(func.count(func.distinct(SEND.c.member_id))).where(
            SEND.c.event_id == event_id, SEND.c.state == "sent", SEND.c.step_id.notin_(("poster", "welcome")))).scalar_one()
    rows = []
    for s in steps:
        for channel, states in sorted(counts.get(s.step_id, {}).items()):
            got = receipts.get(s.step_id, {}) if channel == "sms" else {}
            rows.append({"step": s.step_id, "stage": s.stage, "at": s.at.isoformat(), "channel": channel,
                         **{state: states.get(state, 0) for state in STATES},
                         "sms_delivered": got.get("delivered", "" if not got else 0), "sms_undelivered": got.get("undelivered", "" if not got else 0)})
    for channel, states in sorted(counts.get("welcome", {}).items()):  # welcomes follow joins, not a step of the timeline
        rows.append({"step": "welcome", "stage": "join", "at": "", "channel": channel, **{state: states.get(state, 0) for state in STATES},
                     "sms_delivered": "", "sms_undelivered": ""})
    per_step: dict[str, dict[str, int]] = {}
    for r in rows:
        agg = per_step.setdefault(r["step"], {})
        for state in STATES:
            agg[state] = agg.get(state, 0) + r[state]
    kpi = board["kpi"] if board is not None else _kpi_targets(engine, ev)
    funnel_rows = _funnel_rows(board, ev.audience, reminded, kpi)
    guides = [{**g, "rate": round(g["joined"] / g["scanned"], 4) if g["scanned"] else None, "gmv": yuan(int(g["gmv_fen"]))}
              for g in (board or {}).get("per_guide", [])]
    commitment = board.get("commitment") if board is not None else (draws.commitment_of(engine, event_id) or {}).get("commitment")
    return {
        "event": ev, "rows": rows, "receipts": bool(receipts),
        "steps": [{"id": s.step_id, "stage": s.stage, "at": s.at.astimezone(_tz(ev.timezone)), "state": s.state, "note": s.note} for s in steps],
        "bars": _bars(list(per_step.items()), 600.0),
        "funnel": _bars([(f"{r['label']} {r['step']}", {"sent": r["count"]}) for r in funnel_rows], 600.0),
        "funnel_rows": funnel_rows, "kpis": _kpis(funnel_rows, board), "live_figures": board is not None,
        "per_guide": guides, "per_variant": (board or {}).get("per_variant", []), "comparison": (board or {}).get("comparison"),
        "minute_chart": None if board is None else _minute_chart(board.get("per_minute", {}), ev.timezone), "series": SERIES,
        "draws": (board or {}).get("draws", []), "commitment": commitment,
        "gmv_fen": None if board is None else int(board["gmv_fen"]),
        "live_start": ev.live_start.astimezone(_tz(ev.timezone)), "live_end": ev.live_end.astimezone(_tz(ev.timezone)),
        "log": eventlog.entries(engine, event_id, limit=500),
        "colours": COLOURS, "ratio": ratio,
    }


def _funnel_csv_rows(data: dict[str, Any], board: dict[str, Any] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"section": "funnel", "step": r["step"], "label": r["label"], "count": r["count"], "target": r.get("target"),
                                  "of_previous": r.get("of_previous"), "of_reached": r.get("of_reached")} for r in data["funnel_rows"]]
    if board is not None:
        target_cny = board.get("gmv_target_cny")
        out.append({"section": "gmv", "step": "gmv_fen", "count": int(board["gmv_fen"]), "gmv_fen": int(board["gmv_fen"]),
                    "target": None if target_cny is None else int(target_cny) * 100})
    for g in data["per_guide"]:
        out.append({"section": "guide", "id": g["id"], "name": g["name"], **{k: g[k] for k in ("scanned", "joined", "deposited", "ordered", "gmv_fen")},
                    "rate": g["rate"]})
    for v in data["per_variant"]:
        out.append({"section": "variant", "id": v["id"], "name": v["hook"], "scanned": v["scanned"], "joined": v["joined"], "rate": v["rate"],
                    "enough": "yes" if v["enough"] else "no"})
    return out


def _tz(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def write_report(engine: Engine, event_id: str, directory: Path, state: str | None = None,
                 board: dict[str, Any] | None = None) -> tuple[Path, Path, Path]:
    """Write `<event>-report.html`, `<event>-sends.csv` and `<event>-funnel.csv` into `directory`
    (`state`: the event's, as of the report; `board`: its snapshot from `board.snapshot`, None when not available)."""
    data = report_data(engine, event_id, state, board)
    directory.mkdir(parents=True, exist_ok=True)
    csv_path = directory / f"{event_id}-sends.csv"
    with csv_path.open("w", newline="", encoding="utf-8-sig") as fh:  # with BOM: opens cleanly in Excel
        w = csv.DictWriter(fh, fieldnames=["step", "stage", "at", "channel", *STATES, "sms_delivered", "sms_undelivered"])
        w.writeheader()
        w.writerows(data["rows"])
    funnel_path = directory / f"{event_id}-funnel.csv"
    with funnel_path.open("w", newline="", encoding="utf-8-sig") as fh:
        w = csv.DictWriter(fh, fieldnames=FUNNEL_FIELDS)
        w.writeheader()
        w.writerows(_funnel_csv_rows(data, board))
    env = Environment(loader=PackageLoader("orchestrator", "templates"), autoescape=select_autoescape(["html", "j2"]))
    html_path = directory / f"{event_id}-report.html"
    html_path.write_text(env.get_template("report.html.j2").render(**data, csv_name=csv_path.name, funnel_csv_name=funnel_path.name),
                         encoding="utf-8")
    return html_path, csv_path, funnel_path
