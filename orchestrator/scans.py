"""Scans of a poster's QR code: which event, guide and variant a code stands for, and the counts.

A code (`/s/<code>`) is made per guide x poster variant when the event is scheduled. A scan is
counted in Redis per event, guide, variant and guide x variant, with unique people counted by a
first-party cookie's random id (the board's funnel sets: random ids only, no personal data).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from sqlalchemy import Engine, select

from orchestrator import funnel
from orchestrator.clock import Clock
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
    clock: Clock = Clock()  # the event's: a rehearsal's scans fall in its own minutes

    def now(self) -> float:
        """Epoch seconds on the event's clock."""
        c = self.clock
        return c.virtual_origin + (time.time() - c.real_origin) * c.speed

    @property
    def start_text(self) -> str:
        return f"{date_text(self.live_start)}{self.live_start:%H:%M}"


def resolve(engine: Engine, code: str) -> Scanned | None:
    """The event, guide and variant of `code`; None when no event has it."""
    stmt = (select(SCANCODE.c.code, SCANCODE.c.event_id, EVENT.c.state, EVENT.c.title, EVENT.c.live_start, EVENT.c.timezone,
                   SCANCODE.c.guide_id, GUIDE.c.name, GUIDE.c.contact_code, SCANCODE.c.variant, JOINWAY.c.qr_url,
                   EVENT.c.speed, EVENT.c.real_origin, EVENT.c.virtual_origin)
            .join(EVENT, EVENT.c.id == SCANCODE.c.event_id)
            .outerjoin(GUIDE, (GUIDE.c.event_id == SCANCODE.c.event_id) & (GUIDE.c.guide_id == SCANCODE.c.guide_id))
            .outerjoin(JOINWAY, (JOINWAY.c.event_id == SCANCODE.c.event_id) & (JOINWAY.c.guide_id == SCANCODE.c.guide_id))
            .where(SCANCODE.c.code == code))
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        return None
    code_, event_id, state, title, start, tz, guide_id, guide_name, contact, variant, join_way_qr, speed, real, virtual = row
    return Scanned(code_, event_id, state, title, start.astimezone(ZoneInfo(tz)), guide_id, guide_name or guide_id, contact, variant,
                   join_way_qr, Clock(speed, real, virtual))


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
    scans per event, guide, variant and guide x variant; people, exactly (the board's funnel), with
    the minute of their first scan; and the scan's log entry (both on the event's clock)."""
    keys, template = _tally_template(scanned.event_id, scanned.guide_id, scanned.variant)
    now = scanned.now()
    return Tally(keys, template % {"visitor": visitor, "minute": time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now)), "ms": int(now * 1000)})


@functools.lru_cache(maxsize=4096)
def _tally_template(e: str, g: str, v: str) -> tuple[tuple[str, ...], str]:
    """What a scan of this code counts, but the person and the moment (made once per code)."""
    keys = (f"orch:scans:{e}", funnel.key(e, "scanned"), funnel.key(e, "scanned", "m"), funnel.key(e, "scanned", f"g:{g}"),
            funnel.key(e, "scanned", f"v:{v}"), funnel.DIRTY, f"orch:in:scans:{e}")
    ops = ("h", "1", "total", "h", "1", f"g:{g}", "h", "1", f"v:{v}", "h", "1", f"gv:{g}:{v}",  # scans
           "s", "2", "%(visitor)s", "m", "3", "%(minute)s", "a", "4", "%(visitor)s", "a", "5", "%(visitor)s", "a", "6", e,  # people, exactly
           "x", "7", f"{g},{v},%(visitor)s,%(ms)d")  # the scan's log entry (ids are slugs: no commas)
    return keys, Tally.pack(tuple(o.replace("%", "%%") if "%(" not in o else o for o in ops))


async def scan_counts(redis: Redis, event_id: str) -> dict[str, int]:
    """Scans of the event: 'total', 'g:<guide>', 'v:<variant>', 'gv:<guide>:<variant>', and 'people' (unique, exact)."""
    raw = await redis.hgetall(f"orch:scans:{event_id}")  # type: ignore[misc]
    out = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    out["people"] = int(await redis.scard(funnel.key(event_id, "scanned")))  # type: ignore[misc]
    return out
