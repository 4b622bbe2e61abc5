"""Ingested comments and payments: acknowledged once they are in a Redis stream, moved to the store
by the workers.

A request's items go in with one script: each item's (source, id) is claimed with SET NX (kept
two days) and only a first sighting is appended to the event's stream, so a redelivered item is
counted once and the answer can say so. Redis keeps the stream on disk (AOF, fsync every second:
run it with persistence, as for the job queue), so an acknowledged item survives a crash of every
process here. Every worker moves what is waiting into the store in its upkeep, and a draw first
moves its event's waiting items, so the screen it freezes holds every comment acknowledged
before the freeze moment. Moving is idempotent (the store's unique (source, id)), so two workers
moving the same entries store them once.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from sqlalchemy import Engine

from orchestrator import ingest
from orchestrator.autopipeline import AutoPipeline
from orchestrator.funnel import DIRTY
from orchestrator.funnel import key as funnel_key
from orchestrator.store import ScanLog

SCANLOG = ScanLog.__table__  # type: ignore[attr-defined]

SEEN_FOR = 2 * 24 * 3600
BATCH = 5000
KINDS = {"comments": ingest.COMMENT, "payments": ingest.PAYMENT, "visits": ingest.VISIT}
ID_FIELD = {"comments": "message_id", "payments": "payment_id", "visits": "visit_id"}

# The board's funnel is counted here too, for first sightings only, so a viewer sees an item as soon
# as it is acknowledged (not when a worker moves it). KEYS: the stream, the dirty set, the GMV key,
# the count of items of this kind ever stored (/metrics).
# ARGV: seconds a dedupe key lives, the items as one JSON array, the event id, and per item
# [dedupe key, funnel step's set or '', person, GMV change in fen] as one more JSON array: two
# arguments for any batch, decoded in C, where one argument per key and value cost redis-py's
# pure-Python packing ~22% of a batch request (py-spy).
APPEND = """
local items, marks = cjson.decode(ARGV[2]), cjson.decode(ARGV[4])
local stored, changed = 0, false
for i = 1, #items do
  local mark = marks[i]
  if redis.call('SET', mark[1], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'd', cjson.encode(items[i]))
    stored = stored + 1
    if mark[2] ~= '' then
      redis.call('SADD', mark[2], mark[3])
      changed = true
    end
    if mark[4] ~= 0 then
      redis.call('INCRBY', KEYS[3], mark[4])
      changed = true
    end
  end
end
if changed then redis.call('SADD', KEYS[2], ARGV[3]) end
if stored > 0 then redis.call('INCRBY', KEYS[4], stored) end
return stored
"""
FIELDS = {
    "comments": ("event_id", "source", "message_id", "platform", "room", "user_id", "name", "text", "at", "received_at"),
    "payments": ("event_id", "source", "payment_id", "kind", "order_id", "person", "product", "amount_fen", "at", "received_at"),
    "visits": ("event_id", "source", "visit_id", "kind", "person", "at", "received_at"),
}


INGESTED = "orch:ingested:"  # + kind: items of that kind ever acknowledged


def stream_key(kind: str, event_id: str) -> str:
    return f"orch:in:{kind}:{event_id}"


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder: building one per call costs more


def _encode(kind: str, rows: list[dict[str, Any]]) -> str:
    """The rows as one JSON array of arrays, values in FIELDS order, times as ISO 8601."""
    names = FIELDS[kind][:-2]
    received = rows[0]["received_at"].isoformat()  # one request, one moment
    return _ENCODE([[*(r[n] for n in names), r["at"].isoformat(), received] for r in rows])


def _decode(kind: str, raw: bytes | str) -> dict[str, Any]:
    row: dict[str, Any] = dict(zip(FIELDS[kind], json.loads(raw), strict=True))
    for key in ("at", "received_at"):
        row[key] = datetime.fromisoformat(row[key])
    return row


def _store_scans(engine: Engine, event_id: str, entries: list[Any]) -> None:
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    rows = []
    for entry_id, fields in entries:
        raw = fields[b"d"] if b"d" in fields else fields["d"]
        guide, variant, visitor, ms = (raw.decode() if isinstance(raw, bytes) else raw).split(",")
        rows.append({"event_id": event_id, "entry": entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id),
                     "guide_id": guide, "variant": variant, "visitor": visitor, "at": datetime.fromtimestamp(int(ms) / 1000, timezone.utc)})
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with engine.begin() as conn:
        conn.execute(insert(SCANLOG).on_conflict_do_nothing(), rows)


def counted(kind: str, row: dict[str, Any]) -> tuple[str | None, str, int]:
    """What an item adds to the board's funnel: (step or None, person, GMV change in fen)."""
    if kind == "comments":
        return "commented", row["user_id"], 0
    if kind == "visits":
        return ("entered" if row["kind"] == "enter" else None), row["person"], 0
    step = {"deposit": "deposited", "order": "ordered"}.get(row["kind"])
    gmv = row["amount_fen"] if row["kind"] == "order" else -row["amount_fen"] if row["kind"] == "refund" else 0
    return step, row["person"], gmv


class InStream:
    def __init__(self, redis: Redis, pipe: AutoPipeline | None = None) -> None:
        self.redis = redis
        self._append = redis.register_script(APPEND)
        self._pipe = pipe  # the web app's: each request's script is written together with the others in flight

    async def append(self, kind: str, event_id: str, rows: list[dict[str, Any]]) -> ingest.Stored:
        """Put rows in the event's stream unless seen before; (stored, duplicates). Durable on return."""
        if not rows:
            return ingest.Stored(0, 0)
        keys = [stream_key(kind, event_id), DIRTY, funnel_key(event_id, "gmv"), INGESTED + kind]
        id_field, marks = ID_FIELD[kind], []
        for r in rows:
            step, person, gmv = counted(kind, r)
            marks.append((f"orch:seen:{kind}:{r['source']}:{r[id_field]}", funnel_key(event_id, step) if step else "", person, gmv))
        args: list[Any] = [SEEN_FOR, _encode(kind, rows), event_id, _ENCODE(marks)]
        if self._pipe is None:
            stored = int(await self._append(keys=keys, args=args))
        else:
            try:
                stored = int(await self._pipe.evalsha(self._append.sha, len(keys), *keys, *args))
            except NoScriptError:  # Redis restarted or flushed its scripts: the client loads it (nothing was appended)
                stored = int(await self._append(keys=keys, args=args))
        return ingest.Stored(stored, len(rows) - stored)

    async def move(self, engine: Engine, kind: str, event_id: str) -> int:
        """Move what waits in the event's stream into the store; how many entries were moved."""
        key = stream_key(kind, event_id)
        moved = 0
        while True:
            entries = await self.redis.xrange(key, count=BATCH)
            if not entries:
                return moved
            if kind == "scans":  # counted already, by the scan's own script: only kept here
                await asyncio.to_thread(_store_scans, engine, event_id, entries)
            else:
                rows = [_decode(kind, fields[b"d"] if b"d" in fields else fields["d"]) for _id, fields in entries]
                await asyncio.to_thread(ingest.store, engine, KINDS[kind], rows)  # counted when acknowledged
            await self.redis.xdel(key, *[entry_id for entry_id, _f in entries])
            moved += len(entries)

    async def move_all(self, engine: Engine) -> int:
        """Everything waiting, for every event (the workers' upkeep)."""
        moved = 0
        async for raw in self.redis.scan_iter(match="orch:in:*", count=200):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            _orch, _in, kind, event_id = key.split(":", 3)
            if kind in KINDS or kind == "scans":
                moved += await self.move(engine, kind, event_id)
        return moved
