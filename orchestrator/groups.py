"""Groups added to a scheduled or running event's pool, with the playbook's defaults (CLI and API)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from orchestrator.errors import EventConflict
from orchestrator.pool import BadGroup, add_group, groups_of
from orchestrator.scheduling import get_event, loaded_event
from orchestrator.store import utc_now


def add_to_event(engine: Engine, event_id: str, qr: bytes, expires_at: datetime, *, name: str | None = None,
                 capacity: int | None = None, margin: int | None = None, where: str = "the QR") -> int:
    """Append a WeChat group code to a scheduled or running event's pool, with the playbook's
    defaults; its number. UnknownEvent, EventConflict (cancelled or closed) or BadGroup otherwise.
    Redis picks it up with `Pool.refresh`."""
    ev = get_event(engine, event_id)
    if ev.state in ("cancelled", "closed"):
        raise EventConflict(f"event {event_id} is {ev.state}: its pool takes no more groups")
    join = loaded_event(engine, ev, members=False).playbook.path.join
    if expires_at.tzinfo is None:
        raise BadGroup("the expiry needs a timezone")
    if expires_at <= utc_now():
        raise BadGroup(f"the code expired at {expires_at.isoformat()}: upload a fresh one (a WeChat group code lasts 7 days)")
    number = len(groups_of(engine, event_id)) + 1
    return add_group(engine, event_id, name or join.group_name.replace("{n}", str(number)), qr,
                     capacity=capacity or join.capacity, margin=margin or join.margin, expires_at=expires_at, where=where)
