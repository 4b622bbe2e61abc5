"""`GET /metrics`: Prometheus text of the engine's and the web's figures, read from Redis and the store at each scrape.

Nothing is kept in process memory, so any web process answers the same (the websocket viewers
each process reports to Redis every few seconds are summed). Labels are bounded: events are the
scheduled and running ones, channels and states come from closed lists, kinds are the ingestion's.

- the pool, per event: places left, current group, codes expiring within a day, alerts raised;
- scans and unique scanners per event;
- sends per event, channel and ledger state (the ledger's rows: sent, failed, unknown, ...);
- the job queue: jobs due and not yet taken, and how late the oldest of them is (queue lag);
- ingestion: items acknowledged per kind since Redis began (a counter: rate() is the ingest rate),
  items waiting to be moved into the store and the age of the oldest (ingest lag);
- board viewers connected per event, over every web process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, func, select
from starlette.requests import Request
from starlette.responses import Response

from orchestrator.instream import INGESTED, KINDS, WAITING
from orchestrator.jobs import QUEUE
from orchestrator.scans import scan_counts
from orchestrator.store import Event, Send, utc_now
from web.board import VIEWERS

EVENT = Event.__table__  # type: ignore[attr-defined]
SEND = Send.__table__  # type: ignore[attr-defined]
IN_KINDS = (*KINDS, "scans")  # what waits in the ingestion streams


def _open_events(engine: Engine) -> tuple[list[str], list[tuple[str, str, str, int]]]:
    """The scheduled and running events, and their sends per (event, channel, state)."""
    with engine.connect() as conn:
        events = [e for (e,) in conn.execute(select(EVENT.c.id).where(EVENT.c.state.in_(("scheduled", "running"))).order_by(EVENT.c.id))]
        sends = [(e, c, s, int(n)) for e, c, s, n in conn.execute(
            select(SEND.c.event_id, SEND.c.channel, SEND.c.state, func.count()).where(SEND.c.event_id.in_(events))
            .group_by(SEND.c.event_id, SEND.c.channel, SEND.c.state))] if events else []
    return events, sends


class Families:
    """The families of one scrape, filled before `generate_latest` collects them."""

    def __init__(self) -> None:
        self.items: list[Metric] = []

    def gauge(self, name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=labels)
        self.items.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        yield from self.items


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def metrics(request: Request) -> Response:
    state = request.app.state
    redis = state.redis
    out = Families()
    left = out.gauge("orchestrator_pool_places_left", "Places the group pool has before it runs out", ["event"])
    current = out.gauge("orchestrator_pool_current_group", "The group new scanners are sent to (0: every group full)", ["event"])
    expiring = out.gauge("orchestrator_pool_codes_expiring", "Groups whose QR code expires within a day", ["event"])
    alerts = out.gauge("orchestrator_pool_alerts", "Pool alerts raised to the staff (low on places, codes expiring)", ["event", "kind"])
    scans = CounterMetricFamily("orchestrator_scans", "Poster scans counted", labels=["event"])
    out.items.append(scans)
    people = out.gauge("orchestrator_scanners", "Unique people who scanned (first-party cookie)", ["event"])
    sends = out.gauge("orchestrator_sends", "Sends in the ledger by channel and state (planned, sending, sent, failed, unknown, skipped)",
                      ["event", "channel", "state"])
    now = utc_now()
    events, rows = await asyncio.to_thread(_open_events, state.engine)
    for event_id in events:
        health = await state.pool.health(event_id, now)
        if health is not None:
            left.add_metric([event_id], health.places_left)
            current.add_metric([event_id], health.current)
            expiring.add_metric([event_id], len(health.expiring))
        low = await redis.exists(f"orch:pool:{event_id}:warned:low")
        warned = 0
        async for _key in redis.scan_iter(match=f"orch:pool:{event_id}:warned:expiring:*", count=100):
            warned += 1
        alerts.add_metric([event_id, "pool-low"], low)
        alerts.add_metric([event_id, "pool-expiring"], warned)
        counts = await scan_counts(redis, event_id)
        scans.add_metric([event_id], counts.get("total", 0))
        people.add_metric([event_id], counts.get("people", 0))
    for event_id, channel, send_state, n in rows:
        sends.add_metric([event_id, channel, send_state], n)
    await _queue(redis, out)
    await _ingestion(redis, out)
    await _viewers(redis, out)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(out)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def _queue(redis: Any, out: Families) -> None:
    """arq's queue is a sorted set scored by when each job is due (epoch ms): due and untaken is lag."""
    now_ms = time.time() * 1000
    due = await redis.zcount(QUEUE, "-inf", now_ms)
    oldest = await redis.zrangebyscore(QUEUE, "-inf", now_ms, start=0, num=1, withscores=True)
    out.gauge("orchestrator_queue_jobs_due", "Jobs whose time has come that no worker has taken yet", []).add_metric([], due)
    out.gauge("orchestrator_queue_lag_seconds", "How late the oldest due job not yet taken is (0: none waiting)", []).add_metric(
        [], max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0.0)


async def _ingestion(redis: Any, out: Families) -> None:
    total = CounterMetricFamily("orchestrator_ingested", "Items acknowledged by the signed ingestion API, by kind (since Redis began)",
                                labels=["kind"])
    out.items.append(total)
    for kind in KINDS:
        total.add_metric([kind], int(await redis.get(INGESTED + kind) or 0))
    waiting = out.gauge("orchestrator_ingest_waiting", "Items acknowledged and not yet moved into the store, by kind", ["kind"])
    lag = out.gauge("orchestrator_ingest_lag_seconds", "Age of the oldest item waiting to be moved into the store, by kind", ["kind"])
    now_ms = time.time() * 1000
    per_kind = {kind: [0, 0.0] for kind in IN_KINDS}
    async for raw in redis.scan_iter(match="orch:in:*", count=200):
        parts = _text(raw).split(":", 3)
        if len(parts) != 4 or parts[2] not in per_kind:
            continue
        key, kind = _text(raw), parts[2]
        if kind == "scans":  # one entry a scan; the other kinds' entries are batches, counted as they come and go
            per_kind[kind][0] += int(await redis.xlen(key))
        first = await redis.xrange(key, count=1)
        if first:
            entry_ms = int(_text(first[0][0]).split("-")[0])  # a stream id starts with its epoch ms
            per_kind[kind][1] = max(per_kind[kind][1], (now_ms - entry_ms) / 1000)
    for kind in KINDS:
        per_kind[kind][0] = max(0, int(await redis.get(WAITING + kind) or 0))
    for kind, (n, age) in per_kind.items():
        waiting.add_metric([kind], n)
        lag.add_metric([kind], max(0.0, age))


async def _viewers(redis: Any, out: Families) -> None:
    viewers = out.gauge("orchestrator_board_viewers", "Board viewers connected (websockets), over every web process", ["event"])
    per_event: dict[str, int] = {}
    async for raw in redis.scan_iter(match=VIEWERS + "*", count=100):
        for event_id, n in (await redis.hgetall(raw)).items():
            per_event[_text(event_id)] = per_event.get(_text(event_id), 0) + int(n)
    for event_id, n in sorted(per_event.items()):
        viewers.add_metric([event_id], n)
