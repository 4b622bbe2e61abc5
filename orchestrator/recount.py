"""The board's funnel rebuilt from the store alone: the counters in Redis are a fast copy of what
the stored events say, and this proves it (or repairs Redis after it lost them).

Scans (the scan log), joins, delivered previews and reminders, comments and payments are read in
the order they happened and counted again exactly as they were counted live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import Engine, select

from orchestrator.funnel import Funnel, Seen
from orchestrator.store import Comment, Event, Join, Payment, RoomVisit, ScanLog, Send

CHUNK = 1000
log = logging.getLogger("orchestrator.recount")


def _stored(engine: Engine, event_id: str) -> dict[str, Any]:
    scan, join, send, comment, pay = (t.__table__ for t in (ScanLog, Join, Send, Comment, Payment))  # type: ignore[union-attr]
    event = Event.__table__  # type: ignore[attr-defined]
    visit = RoomVisit.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return {
            "reached": conn.execute(select(event.c.audience).where(event.c.id == event_id)).scalar_one(),
            "scans": conn.execute(select(scan.c.visitor, scan.c.guide_id, scan.c.variant, scan.c.at).where(scan.c.event_id == event_id)
                                  .order_by(scan.c.at, scan.c.id)).all(),
            "joins": conn.execute(select(join.c.person, join.c.guide_id, join.c.at).where(join.c.event_id == event_id)
                                  .order_by(join.c.at, join.c.person)).all(),
            "reminded": conn.execute(select(send.c.member_id).where(send.c.event_id == event_id, send.c.state == "sent",
                                                                    (send.c.step_id == "preview") | send.c.step_id.like("reminder:%"))).all(),
            "comments": conn.execute(select(comment.c.user_id).where(comment.c.event_id == event_id).order_by(comment.c.at)).all(),
            "payments": conn.execute(select(pay.c.kind, pay.c.person, pay.c.amount_fen, pay.c.guide_id).where(pay.c.event_id == event_id)).all(),
            "entered": conn.execute(select(visit.c.person).where(visit.c.event_id == event_id, visit.c.kind == "enter").order_by(visit.c.at)).all(),
        }


def by_minute(rows: Iterable[tuple[datetime, Seen]]) -> Iterator[tuple[datetime, list[Seen]]]:
    """Runs of rows (in time order) within one minute, at most CHUNK long, with the run's first moment."""
    run: list[Seen] = []
    start: datetime | None = None
    for at, seen in rows:
        if start is not None and (at.replace(second=0, microsecond=0) != start.replace(second=0, microsecond=0) or len(run) >= CHUNK):
            yield start, run
            run = []
        if not run:
            start = at
        run.append(seen)
    if run and start is not None:
        yield start, run


async def rebuild(redis: Redis, engine: Engine, event_id: str) -> None:
    """Count the event's figures again from the store and put them in place of the live ones at once."""
    data = await asyncio.to_thread(_stored, engine, event_id)
    counts: list[tuple[str, list[Seen], datetime | None]] = []
    # in order, a minute at a time: each person counts in the minute they first did it
    counts += [("scanned", seen, at) for at, seen in by_minute((at, Seen(visitor, guide, variant))
                                                                for visitor, guide, variant, at in data["scans"])]
    counts += [("joined", seen, at) for at, seen in by_minute((at, Seen(p, g)) for p, g, at in data["joins"])]
    batches: list[tuple[str, list[Seen]]] = [
        ("reminded", [Seen(m) for (m,) in data["reminded"]]),
        ("entered", [Seen(p) for (p,) in data["entered"]]),
        ("commented", [Seen(u) for (u,) in data["comments"]]),
        ("deposited", [Seen(p, g) for k, p, _a, g in data["payments"] if k == "deposit"]),
        ("ordered", [Seen(p, g) for k, p, _a, g in data["payments"] if k == "order"]),
    ]
    for step, seen in batches:
        counts += [(step, seen[i:i + CHUNK], None) for i in range(0, len(seen), CHUNK)]
    gmv: dict[str | None, int] = {}  # per guide credited (None: nobody)
    for k, _p, a, g in data["payments"]:
        gmv[g] = gmv.get(g, 0) + (a if k == "order" else -a if k == "refund" else 0)
    await Funnel(redis).replace(event_id, int(data["reached"]), counts, sorted(gmv.items(), key=lambda x: x[0] or ""))


async def figures_from_store(redis: Redis, engine: Engine, event_id: str) -> dict[str, Any] | None:
    """The board's snapshot for a report, counted again from the store (what waits in the event's
    streams moved there first), so a report never depends on Redis having kept its counters; None
    when that fails (Redis unreachable, say): the report is written without the live figures."""
    from orchestrator.board import snapshot
    from orchestrator.instream import InStream

    try:
        stream = InStream(redis)
        for kind in ("scans", "comments", "payments", "visits"):
            await stream.move(engine, kind, event_id)
        await rebuild(redis, engine, event_id)
        return await snapshot(redis, engine, event_id, fresh=True)
    except Exception as e:  # the report is written anyway, without the live figures
        log.warning("%s: the report goes without the live figures: %s: %s", event_id, type(e).__name__, e)
        return None
