"""Signed ingestion: `POST /api/events/<event>/comments` and `/payments` (deposits, refunds, orders).

A request is signed like our webhooks: `X-Orchestrator-Timestamp: <unix seconds>` and
`X-Orchestrator-Signature: v1=<hex HMAC-SHA256(ORCH_INGEST_SECRET, "<timestamp>." + body)>`; a
timestamp more than 5 minutes away is a replay. The body (at most 1 MB) is one item or a batch
(`{"comments": [...]}` / `{"payments": [...]}`, at most 1,000), checked whole before anything is
stored; acknowledged once durable (`{"stored": n, "duplicates": m}`: in Redis's persisted stream, moved
to the store by the workers, see `orchestrator.instream`); an item sent again (same source and id)
is counted once. `?source=` names the feed (default `api`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
import re
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse

from orchestrator import ingest
from orchestrator.channels.webhook import verify
from orchestrator.errors import UnknownEvent
from orchestrator.scheduling import get_event
from orchestrator.store import utc_now

MAX_BODY = 1_000_000
SOURCE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _error(status: int, message: str, at: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, **({"at": at} if at else {})}, status_code=status)


async def _checked(request: Request) -> tuple[Any, bytes, str] | JSONResponse:
    """(event, body, source) of a signed request, or the error answer."""
    state = request.app.state
    secret = state.settings.ingest_secret
    if not secret:
        return _error(503, "ingestion is off: set ORCH_INGEST_SECRET on the web processes")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        return _error(413, f"the body has {int(length):,} bytes; at most {MAX_BODY:,}: send smaller batches")
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, f"the body has {len(body):,} bytes; at most {MAX_BODY:,}: send smaller batches")
    ts = request.headers.get("x-orchestrator-timestamp", "")
    signature = request.headers.get("x-orchestrator-signature", "")
    if not ts or not signature:
        return _error(401, "unsigned: send X-Orchestrator-Timestamp and X-Orchestrator-Signature")
    if not verify(secret, ts, body, signature):
        if ts.isdigit() and verify(secret, ts, body, signature, now=int(ts)):
            return _error(401, "the timestamp is more than 5 minutes away from our clock: a replay, or a clock to set right")
        return _error(401, "the signature does not match the body (v1=HMAC-SHA256 of '<timestamp>.' + body with the ingest secret)")
    source = request.query_params.get("source", "api")
    if not SOURCE.match(source):
        return _error(422, "'source' is a short lower-case name of the feed, e.g. api, bilibili, csv", "query.source")
    ev = await _event(request)
    if isinstance(ev, JSONResponse):
        return ev
    return ev, body, source


async def _accept(request: Request, kind: str, rows_of: Callable[[Any, Any, str, Any], Any]) -> JSONResponse:
    """Check the request, turn its body into rows (`rows_of(event, body, source, tz)`, which may be
    a coroutine), append them to the event's durable stream, answer what was new."""
    checked = await _checked(request)
    if isinstance(checked, JSONResponse):
        return checked
    ev, body, source = checked
    return await _append(request, kind, ev, body, source, rows_of)


async def _append(request: Request, kind: str, ev: Any, body: bytes, source: str, rows_of: Callable[[Any, Any, str, Any], Any]) -> JSONResponse:
    try:
        parsed = orjson.loads(body)
    except ValueError as e:
        return _error(400, f"the body is not JSON: {e}")
    try:
        rows = rows_of(ev, parsed, source, ZoneInfo(ev.timezone))
        if asyncio.iscoroutine(rows):
            rows = await rows
    except ingest.BadInput as e:
        return _error(422, str(e), e.at)
    done = await request.app.state.instream.append(kind, ev.id, rows)
    return JSONResponse({"stored": done.stored, "duplicates": done.duplicates})


async def post_comments(request: Request) -> JSONResponse:
    checked = await _checked(request)
    if isinstance(checked, JSONResponse):
        return checked
    ev, body, source = checked
    usual = ingest.usual_batch(body)
    if usual is not None:  # nearly every batch a feed sends
        done = await request.app.state.instream.append_usual(ev.id, source, utc_now(), body, usual, ev.timezone)
        return JSONResponse({"stored": done.stored, "duplicates": done.duplicates})
    return await _append(request, "comments", ev, body, source, lambda ev, body, source, tz: ingest.comment_rows(ev.id, source, body, tz))


async def post_visits(request: Request) -> JSONResponse:
    """Room entries and exits: `{"visits": [{"visit_id", "kind": "enter"|"exit", "person", "time"}]}`."""
    return await _accept(request, "visits", lambda ev, body, source, tz: ingest.visit_rows(ev.id, source, body, tz))


async def post_payments(request: Request) -> JSONResponse:
    from orchestrator.scheduling import loaded_event

    async def rows_of(ev: Any, body: Any, source: str, tz: Any) -> list[dict[str, Any]]:
        engine = request.app.state.engine
        loaded = await asyncio.to_thread(loaded_event, engine, ev, members=False)
        deposit = loaded.playbook.mechanism.deposit_draw
        rows = ingest.payment_rows(ev.id, source, body, tz, {p.id for p in deposit.products} if deposit else set(), {g.id for g in loaded.guides})
        await asyncio.to_thread(ingest.attribute, engine, ev.id, rows)  # whose sale, for the board's per-guide table
        return rows

    return await _accept(request, "payments", rows_of)


class Events:
    """Events by id with a few seconds' memory per process (a feed posts many times a second; a
    cancellation is seen within `ttl` seconds). One lookup at a time per event: the requests that
    find the memory expired wait for the same lookup (200 feeds in flight made 200 lookups every
    `ttl` seconds, 5% of a web process). Nothing in it is shared between processes."""

    def __init__(self, engine: Any, ttl: float = 5.0) -> None:
        self.engine, self.ttl = engine, ttl
        self._seen: dict[str, tuple[float, Any]] = {}
        self._looking: dict[str, asyncio.Future[Any]] = {}

    async def get(self, event_id: str) -> Any:
        hit = self._seen.get(event_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        lookup = self._looking.get(event_id)
        if lookup is None:
            lookup = asyncio.ensure_future(asyncio.to_thread(get_event, self.engine, event_id))
            self._looking[event_id] = lookup
            lookup.add_done_callback(lambda done: self._found(event_id, done))
        return await asyncio.shield(lookup)  # a caller that gives up does not cancel the others' lookup

    def _found(self, event_id: str, lookup: asyncio.Future[Any]) -> None:
        del self._looking[event_id]
        if lookup.cancelled() or lookup.exception() is not None:  # UnknownEvent, a store error: not remembered
            return
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[event_id] = (time.monotonic() + self.ttl, lookup.result())


async def _event(request: Request) -> Any:
    try:
        ev = await request.app.state.events.get(request.path_params["event"])
    except UnknownEvent as e:
        return _error(404, str(e))
    if ev.state == "cancelled":
        return _error(409, f"event {ev.id} is cancelled")
    return ev


async def _store_comments(request: Request, ev: Any, source: str, batch: dict[str, Any]) -> JSONResponse:
    if not batch["comments"]:
        return JSONResponse({"stored": 0, "duplicates": 0})
    try:
        rows = ingest.comment_rows(ev.id, source, batch, ZoneInfo(ev.timezone))
    except ingest.BadInput as e:
        return _error(422, str(e), e.at)
    done = await request.app.state.instream.append("comments", ev.id, rows)
    return JSONResponse({"stored": done.stored, "duplicates": done.duplicates})


async def post_douyin(request: Request) -> JSONResponse:
    """`POST /ingest/douyin/<event>`: Douyin's comment push, checked by its own signature."""
    from orchestrator import douyin

    secret = request.app.state.settings.douyin_secret
    if not secret:
        return _error(503, "Douyin push is off: set ORCH_DOUYIN_SECRET (the app secret) on the web processes")
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, f"the body has {len(body):,} bytes; at most {MAX_BODY:,}")
    headers = {k.lower(): v for k, v in request.headers.items()}
    if not douyin.signed(headers, body, secret):
        return _error(401, "x-signature does not match (base64 md5 of the sorted x- headers, the body and the app secret)")
    ev = await _event(request)
    if isinstance(ev, JSONResponse):
        return ev
    try:
        batch = douyin.comments(headers, body)
    except ingest.BadInput as e:
        return _error(422, str(e), e.at)
    return await _store_comments(request, ev, "douyin", batch)


WX_PER_MINUTE = 6000  # an unsigned feed is rate-limited per event


async def post_wxlivespy(request: Request) -> JSONResponse:
    """`POST /ingest/wxlivespy/<event>/<key>`: what the wxlivespy capture tool forwards (unsigned:
    the key in the path is the secret)."""
    import hmac as _hmac

    from orchestrator import wxlivespy

    secret = request.app.state.settings.ingest_secret
    if not secret:
        return _error(503, "ingestion is off: set ORCH_INGEST_SECRET on the web processes")
    event_id = request.path_params["event"]
    if not _hmac.compare_digest(request.path_params["key"], wxlivespy.path_key(secret, event_id)):
        return _error(404, "no such feed")  # a wrong key reveals nothing
    body = await request.body()
    if len(body) > MAX_BODY:
        return _error(413, f"the body has {len(body):,} bytes; at most {MAX_BODY:,}")
    redis = request.app.state.redis
    minute = f"orch:wx:{event_id}:{int(time.time()) // 60}"
    async with redis.pipeline(transaction=False) as pipe:
        pipe.incr(minute)
        pipe.expire(minute, 120)
        count, _ = await pipe.execute()
    if int(count) > WX_PER_MINUTE:
        return _error(429, f"more than {WX_PER_MINUTE} forwards a minute for this event")
    ev = await _event(request)
    if isinstance(ev, JSONResponse):
        return ev
    try:
        batch = wxlivespy.comments(wxlivespy.decode(body, request.headers.get("content-encoding")))
    except ingest.BadInput as e:
        return _error(422, str(e), e.at)
    return await _store_comments(request, ev, "wxlivespy", batch)
