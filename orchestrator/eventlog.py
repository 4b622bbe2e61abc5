"""The append-only event log: what happened to an event, in order, for people and reports."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from orchestrator.store import LogEntry, utc_now

LOG = LogEntry.__table__  # type: ignore[attr-defined]


def record(engine: Engine, event_id: str, kind: str, message: str, *, step_id: str | None = None,
           event_time: datetime | None = None, data: dict[str, Any] | None = None) -> None:
    with engine.begin() as conn:
        record_in(conn, event_id, kind, message, step_id=step_id, event_time=event_time, data=data)


def record_in(conn: Connection, event_id: str, kind: str, message: str, *, step_id: str | None = None,
              event_time: datetime | None = None, data: dict[str, Any] | None = None) -> None:
    """`record` inside the caller's transaction (the entry exists exactly when the rest of it does)."""
    conn.execute(insert(LOG).values(event_id=event_id, at=utc_now(), event_time=event_time, kind=kind, step_id=step_id,
                                    message=message, data=None if data is None else json.dumps(data, ensure_ascii=False, default=str)))


def entries(engine: Engine, event_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(LOG).where(LOG.c.event_id == event_id, LOG.c.id > after).order_by(LOG.c.id).limit(limit)).all()
    out = []
    for r in rows:
        d = dict(r._mapping)
        d["data"] = json.loads(d["data"]) if d["data"] else None
        out.append(d)
    return out
