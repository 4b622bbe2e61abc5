"""Scans of a poster's QR code: which event, guide and variant a code stands for, and the counts.

A code (`/s/<code>`) is made per guide x poster variant when the event is scheduled. A scan is
counted in Redis per event, guide, variant and guide x variant, with unique people counted by a
first-party cookie's random id (HyperLogLog: no list of people is kept, nor any personal data).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from sqlalchemy import Engine, select

from orchestrator import funnel
from orchestrator.copytext import date_text
from orchestrator.pool import Tally
from orchestrator.store import Event, Guide, JoinWay, ScanCode

SCANCODE = ScanCode.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
GUIDE = Guide.__table__  # type: ignore[attr-defined]
JOINWAY = JoinWay.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Scanned:
    """What a scan code stands for, with what the join page shows."""

    code: str
    event_id: str
    event_state: str
    title: str
    live_start: datetime  # event timezone
    guide_id: str
    guide_name: str
    guide_contact: str | None
    variant: str
    join_way_qr: str | None = None  # WeCom: the guide's group live code (its picture's URL); None: the pool's groups

    @property
    def start_text(self) -> str:
        return f"{date_text(self.live_start)}{self.live_start:%H:%M}"


def resolve(engine: Engine, code: str) -> Scanned | None:
    """The event, guide and variant of `code`; None when no event has it."""
    stmt = (select(SCANCODE.c.code, SCANCODE.c.event_id, EVENT.c.state, EVENT.c.title, EVENT.c.live_start, EVENT.c.timezone,
                   SCANCODE.c.guide_id, GUIDE.c.name, GUIDE.c.contact_code, SCANCODE.c.variant, JOINWAY.c.qr_url)
            .join(EVENT, EVENT.c.id == SCANCODE.c.event_id)
            .outerjoin(GUIDE, (GUIDE.c.event_id == SCANCODE.c.event_id) & (GUIDE.c.guide_id == SCANCODE.c.guide_id))
            .outerjoin(JOINWAY, (JOINWAY.c.event_id == SCANCODE.c.event_id) & (JOINWAY.c.guide_id == SCANCODE.c.guide_id))
            .where(SCANCODE.c.code == code))
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    code_, event_id, state, title, start, tz, guide_id, guide_name, contact, variant, join_way_qr = row
    return Scanned(code_, event_id, state, title, start.astimezone(ZoneInfo(tz)), guide_id, guide_name or guide_id, contact, variant,
                   join_way_qr)


class Resolver:
    """`resolve` with a few seconds' memory per process: a code never changes, an event's state
    (cancelled, closed) is seen within `ttl` seconds. Nothing in it is shared between processes."""

    def __init__(self, engine: Engine, ttl: float = 5.0, size: int = 10_000) -> None:
        self.engine = engine
        self.ttl = ttl
        self.size = size
        self._seen: dict[str, tuple[float, Scanned | None]] = {}

    def cached(self, code: str) -> tuple[bool, Scanned | None]:
        """(known, what) from memory alone: a scan need not leave the event loop for a code seen just now."""
        hit = self._seen.get(code)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def __call__(self, code: str) -> Scanned | None:
        known, found = self.cached(code)
        if known:
            return found
        now = time.monotonic()
        found = resolve(self.engine, code)
        if len(self._seen) >= self.size:
            self._seen.clear()
        self._seen[code] = (now + self.ttl, found)
        return found


def scan_tally(scanned: Scanned, visitor: str) -> Tally:
    """The counts of one scan of `scanned` by `visitor` (a random id from a first-party cookie):
    per event, guide, variant and guide x variant, and unique people (HyperLogLog)."""
    e, g, v = scanned.event_id, scanned.guide_id, scanned.variant
    keys = (f"orch:scans:{e}", f"orch:scanners:{e}", f"orch:scanners:{e}:g:{g}", f"orch:scanners:{e}:v:{v}",
            funnel.key(e, "scanned"), funnel.key(e, "scanned", "m"), funnel.key(e, "scanned", f"g:{g}"),
            funnel.key(e, "scanned", f"v:{v}"), funnel.DIRTY, f"orch:in:scans:{e}")
    now = time.time()
    minute = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now))
    entry = json.dumps([g, v, visitor, int(now * 1000)], ensure_ascii=False, separators=(",", ":"))
    ops = ("h", "1", "total", "h", "1", f"g:{g}", "h", "1", f"v:{v}", "h", "1", f"gv:{g}:{v}",
           "p", "2", visitor, "p", "3", visitor, "p", "4", visitor,
           "s", "5", visitor, "m", "6", minute, "a", "7", visitor, "a", "8", visitor, "a", "9", e,  # the funnel: exact people
           "x", "10", entry)  # the scan's log entry, moved to the store by the workers
    return Tally(keys, ops)


async def scan_counts(redis: Redis, event_id: str) -> dict[str, int]:
    """Scans of the event: 'total', 'g:<guide>', 'v:<variant>', 'gv:<guide>:<variant>', and 'people' (unique)."""
    raw = await redis.hgetall(f"orch:scans:{event_id}")  # type: ignore[misc]
    out = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    out["people"] = int(await redis.pfcount(f"orch:scanners:{event_id}"))
    return out
