"""`GET /metrics`: Prometheus text of what the web side sees, read from Redis at each scrape.

Per running or scheduled event: the pool's places left before it runs out, its current group,
its groups whose code expires within a day, and the alerts the workers raised about it; scans
and unique scanners. Nothing is kept in process memory, so any web process answers the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import Engine, select
from starlette.requests import Request
from starlette.responses import Response

from orchestrator.scans import scan_counts
from orchestrator.store import Event, utc_now

EVENT = Event.__table__  # type: ignore[attr-defined]


def _open_events(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [e for (e,) in conn.execute(select(EVENT.c.id).where(EVENT.c.state.in_(("scheduled", "running"))).order_by(EVENT.c.id))]


async def metrics(request: Request) -> Response:
    state = request.app.state
    registry = CollectorRegistry()
    g: dict[str, Any] = {
        "left": Gauge("orchestrator_pool_places_left", "Places the group pool has before it runs out", ["event"], registry=registry),
        "current": Gauge("orchestrator_pool_current_group", "The group new scanners are sent to (0: every group full)", ["event"],
                         registry=registry),
        "expiring": Gauge("orchestrator_pool_codes_expiring", "Groups whose QR code expires within a day", ["event"], registry=registry),
        "alerts": Gauge("orchestrator_pool_alerts", "Pool alerts raised to the staff (low on places, codes expiring)", ["event", "kind"],
                        registry=registry),
        "scans": Gauge("orchestrator_scans", "Poster scans counted", ["event"], registry=registry),
        "people": Gauge("orchestrator_scanners", "Unique people who scanned (first-party cookie)", ["event"], registry=registry),
    }
    now = utc_now()
    for event_id in await asyncio.to_thread(_open_events, state.engine):
        health = await state.pool.health(event_id, now)
        if health is not None:
            g["left"].labels(event_id).set(health.places_left)
            g["current"].labels(event_id).set(health.current)
            g["expiring"].labels(event_id).set(len(health.expiring))
        low = await state.redis.exists(f"orch:pool:{event_id}:warned:low")
        expiring = 0
        async for _key in state.redis.scan_iter(match=f"orch:pool:{event_id}:warned:expiring:*", count=100):
            expiring += 1
        g["alerts"].labels(event_id, "pool-low").set(low)
        g["alerts"].labels(event_id, "pool-expiring").set(expiring)
        counts = await scan_counts(state.redis, event_id)
        g["scans"].labels(event_id).set(counts.get("total", 0))
        g["people"].labels(event_id).set(counts.get("people", 0))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
