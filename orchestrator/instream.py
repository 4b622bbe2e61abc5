"""Ingested comments and payments: acknowledged once they are in a Redis stream, moved to the store
by the workers.

A request's items go in with one script: their ids are added to the set of the event's ids from
that source (kept until three days after its last item), the request becomes one stream entry, and
only first sightings are counted, so a redelivered item is counted once and the answer can say so.
A usual comment batch is kept whole (the store's unique (source, id) drops an item seen before
when it is moved); any other batch marks which of its items are new (a payment seen again must not
count its amount twice). Redis keeps the stream on disk (AOF, fsync every second:
run it with persistence, as for the job queue), so an acknowledged item survives a crash of every
process here. Every worker moves what is waiting into the store in its upkeep, and a draw first
moves its event's waiting items, so the screen it freezes holds every comment acknowledged
before the freeze moment. Moving is idempotent (the store's unique (source, id)), so two workers
moving the same entries store them once.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis
from sqlalchemy import Engine

from orchestrator import ingest
from orchestrator.autopipeline import AutoPipeline, run_script
from orchestrator.funnel import DIRTY
from orchestrator.funnel import key as funnel_key
from orchestrator.store import ScanLog

SCANLOG = ScanLog.__table__  # type: ignore[attr-defined]

SEEN_SECONDS = 3 * 24 * 3600  # an event's ids from a source are kept this long after its last item from there
BATCH = 5000  # rows (scans: entries) per store transaction
ENTRIES = 200  # entries of comments, payments or visits read at once: up to 1,000 items each
KINDS = {"comments": ingest.COMMENT, "payments": ingest.PAYMENT, "visits": ingest.VISIT}
ID_FIELD = {"comments": "message_id", "payments": "payment_id", "visits": "visit_id"}

# One script per request, so what a batch adds is all or nothing and acknowledged only once in
# Redis's AOF. KEYS: the stream, the dirty set, the counts of items of this kind ever stored and now
# waiting (/metrics), the set of the event's ids from this source.
# ARGV: seconds the set of ids lives on, the batch as one JSON string (stored as it is), the source, the
# time received, the event id; then JSON arrays: the ids; per item its person; the funnel's sets
# every item's person joins (an array of keys) or per item its sets (an array of such arrays); per
# item its [counter, change] pairs (GMV), or an empty array when no item changes a counter; last,
# the batch's field in the entry ('b': an array of values per item, FIELDS; 'u': a usual comment
# batch as the request sent it) and the zone of times sent without an offset ('' for none).
# Per batch, not per item, wherever the answer allows: the ids are looked up with one SMISMEMBER
# and the new ones added with one SADD; the people of a funnel step with one SADD; the batch is
# one stream entry (with the indexes of the new items when some were seen before). Flat arrays where
# it counts: cjson builds a table per nested array, so a comment batch (every item joins the same
# set) sends that set once, not once per item. (One command per item, SET NX, XADD, SADD, cost ~10 µs
# an item.)
APPEND = """
local ids = cjson.decode(ARGV[6])
local n = #ids
local seen = {}
local found = redis.call('SMISMEMBER', KEYS[5], unpack(ids))
for i = 1, n do if found[i] == 1 then seen[ids[i]] = true end end
local new, kept = {}, {}
for i = 1, n do
  local id = ids[i]
  if not seen[id] then
    seen[id] = true
    new[#new + 1] = id
    kept[#kept + 1] = i
  end
end
if #new == 0 then return 0 end
redis.call('SADD', KEYS[5], unpack(new))
redis.call('EXPIRE', KEYS[5], ARGV[1])
local entry = {'*', ARGV[10], ARGV[2], 's', ARGV[3], 'r', ARGV[4]}
if ARGV[11] ~= '' then
  entry[#entry + 1] = 'z'
  entry[#entry + 1] = ARGV[11]
end
if #new < n then
  local indexes = {}
  for j, i in ipairs(kept) do indexes[j] = i - 1 end
  entry[#entry + 1] = 'k'
  entry[#entry + 1] = table.concat(indexes, ',')
end
redis.call('XADD', KEYS[1], unpack(entry))
local persons, sets, changes = cjson.decode(ARGV[7]), cjson.decode(ARGV[8]), cjson.decode(ARGV[9])
local changed = false
if sets[1] == nil or type(sets[1]) == 'string' then
  local who = persons
  if #new < n then
    who = {}
    for j, i in ipairs(kept) do who[j] = persons[i] end
  end
  for _, set in ipairs(sets) do
    redis.call('SADD', set, unpack(who))
    changed = true
  end
else
  local people = {}
  for _, i in ipairs(kept) do
    for _, set in ipairs(sets[i]) do
      local who = people[set]
      if not who then who = {}; people[set] = who end
      who[#who + 1] = persons[i]
    end
  end
  for set, who in pairs(people) do
    redis.call('SADD', set, unpack(who))
    changed = true
  end
end
if #changes > 0 then
  local counters = {}
  for _, i in ipairs(kept) do
    for _, change in ipairs(changes[i]) do
      counters[change[1]] = (counters[change[1]] or 0) + change[2]
    end
  end
  for counter, by in pairs(counters) do
    if by ~= 0 then
      redis.call('INCRBY', counter, by)
      changed = true
    end
  end
end
if changed then redis.call('SADD', KEYS[2], ARGV[5]) end
redis.call('INCRBY', KEYS[3], #new)
redis.call('INCRBY', KEYS[4], #new)
return #new
"""
# A usual comment batch (nearly every request of a feed): which items are new does not matter past
# the count (every item only marks its author as commented, and the store keeps an item once), so
# the ids are added without being looked up first: one pass over a set of millions of ids, not two
# (each id touched is a cache miss: 0.5 us; the look-up was a fifth of the script). KEYS: as APPEND's, then
# the funnel's set of people who commented. ARGV: seconds the set of ids lives on, the request's
# body, the source, the time received, the event id, the JSON arrays of ids and of authors, the
# zone of times without an offset. The entry counts its new items ('n') when some were seen before.
APPEND_USUAL = """
local ids = cjson.decode(ARGV[6])
local n = #ids
local added = redis.call('SADD', KEYS[5], unpack(ids))
if added == 0 then return 0 end
redis.call('EXPIRE', KEYS[5], ARGV[1])
local entry = {'*', 'u', ARGV[2], 's', ARGV[3], 'r', ARGV[4], 'z', ARGV[8]}
if added < n then
  entry[#entry + 1] = 'n'
  entry[#entry + 1] = added
end
redis.call('XADD', KEYS[1], unpack(entry))
redis.call('SADD', KEYS[6], unpack(cjson.decode(ARGV[7])))
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('INCRBY', KEYS[3], added)
redis.call('INCRBY', KEYS[4], added)
return added
"""
# Entries moved into the store leave the stream and the count of items waiting, together; an entry
# two movers both stored is taken off once. KEYS: the stream, the count waiting. ARGV: per entry its
# id and its number of items.
MOVED = """
local gone = 0
for i = 1, #ARGV, 2 do
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then gone = gone + tonumber(ARGV[i + 1]) end
end
if gone > 0 then redis.call('DECRBY', KEYS[2], gone) end
return gone
"""
# An item's values in the stream, in this order; its event is the stream's, its source and the time
# it was received are its entry's.
FIELDS = {
    "comments": ("message_id", "platform", "room", "user_id", "name", "text", "at"),
    "payments": ("payment_id", "kind", "order_id", "person", "product", "amount_fen", "guide_id", "at"),
    "visits": ("visit_id", "kind", "person", "at"),
}
VALUES = {kind: itemgetter(*names) for kind, names in FIELDS.items()}
# Entries written before batches were one entry each: one row, every field (kept readable so an
# upgrade in the middle of an event moves what was waiting).
OLD_FIELDS = {
    "comments": ("event_id", "source", "message_id", "platform", "room", "user_id", "name", "text", "at", "received_at"),
    "payments": ("event_id", "source", "payment_id", "kind", "order_id", "person", "product", "amount_fen", "at", "received_at"),
    "visits": ("event_id", "source", "visit_id", "kind", "person", "at", "received_at"),
}


INGESTED = "orch:ingested:"  # + kind: items of that kind ever acknowledged
WAITING = "orch:waiting:"  # + kind: items of that kind acknowledged and not yet in the store (entries are batches)


def stream_key(kind: str, event_id: str) -> str:
    return f"orch:in:{kind}:{event_id}"


def seen_key(kind: str, event_id: str, source: str) -> str:
    """The set of ids of items of `kind` the event got from `source`."""
    return f"orch:seen:{kind}:{event_id}:{source}"


def new_items(fields: dict[Any, Any], rows: list[dict[str, Any]]) -> int:
    """How many of an entry's items were first sightings: a usual comment batch keeps the ones seen
    before too, and says how many were new."""
    new = _field(fields, "n")
    return int(new) if new is not None else len(rows)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _field(fields: dict[Any, Any], name: str) -> Any:
    return fields.get(name.encode(), fields.get(name))


def _rows_of(kind: str, event_id: str, fields: dict[Any, Any]) -> list[dict[str, Any]]:
    """The rows of one stream entry (a batch, or one row in the format before batches)."""
    old = _field(fields, "d")
    if old is not None:
        row: dict[str, Any] = dict(zip(OLD_FIELDS[kind], orjson.loads(old), strict=True))
        for key in ("at", "received_at"):
            row[key] = datetime.fromisoformat(row[key])
        if kind == "payments":
            row["guide_id"] = None  # not known before payments were credited to guides
        return [row]
    source, received = _text(_field(fields, "s")), datetime.fromisoformat(_text(_field(fields, "r")))
    kept = _field(fields, "k")
    usual = _field(fields, "u")
    if usual is not None:  # a usual comment batch, the request's body
        comments = ingest.usual_comments(usual)
        if kept is not None:
            comments = [comments[int(i)] for i in _text(kept).split(",")]
        zone = ZoneInfo(_text(_field(fields, "z")))
        times = {when: ingest.usual_time(when, zone).astimezone(timezone.utc) for when in {c.time for c in comments}}
        return [{"message_id": c.message_id, "platform": c.platform, "room": c.room, "user_id": c.user_id, "name": c.name, "text": c.text,
                 "at": times[c.time], "event_id": event_id, "source": source, "received_at": received} for c in comments]
    items = orjson.loads(_field(fields, "b"))
    if kept is not None:
        items = [items[int(i)] for i in _text(kept).split(",")]
    names = FIELDS[kind]
    rows = []
    for values in items:
        row = dict(zip(names, values, strict=True))
        row["at"] = datetime.fromisoformat(row["at"]).astimezone(timezone.utc)
        row.update(event_id=event_id, source=source, received_at=received)
        rows.append(row)
    return rows


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


def _marks(kind: str, event_id: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str] | list[list[str]],
                                                                      list[list[tuple[str, int]]]]:
    """Per item its id and its person; the funnel's sets every item's person joins, or per item
    its sets; per item its [counter, change] pairs, or none at all (what `counted` says of each
    item, and the guide a payment is credited to)."""
    if kind == "comments":  # thousands a second, each counting its author as commented and nothing else
        return [r["message_id"] for r in rows], [r["user_id"] for r in rows], [funnel_key(event_id, "commented")], []
    id_field = ID_FIELD[kind]
    ids: list[str] = []
    sets: list[list[str]] = []
    persons: list[str] = []
    changes: list[list[tuple[str, int]]] = []
    for r in rows:
        step, person, gmv = counted(kind, r)
        guide = r.get("guide_id")
        sets.append([funnel_key(event_id, step)] + ([funnel_key(event_id, step, f"g:{guide}")] if guide else []) if step else [])
        changes.append([(funnel_key(event_id, "gmv"), gmv)] + ([(funnel_key(event_id, "gmv", f"g:{guide}"), gmv)] if guide else []) if gmv else [])
        ids.append(r[id_field])
        persons.append(person)
    return ids, persons, sets, changes if any(changes) else []


class InStream:
    def __init__(self, redis: Redis, pipe: AutoPipeline | None = None) -> None:
        self.redis = redis
        self._append = redis.register_script(APPEND)
        self._append_usual = redis.register_script(APPEND_USUAL)
        self._moved = redis.register_script(MOVED)
        self._pipe = pipe  # the web app's: each request's script is written together with the others in flight

    async def append(self, kind: str, event_id: str, rows: list[dict[str, Any]]) -> ingest.Stored:
        """Put rows in the event's stream unless seen before; (stored, duplicates). Durable on return."""
        if not rows:
            return ingest.Stored(0, 0)
        batches: dict[tuple[str, datetime], list[dict[str, Any]]] = {}  # one per source and moment (a request is one)
        for r in rows:
            batches.setdefault((r["source"], r["received_at"]), []).append(r)
        stored = 0
        for (source, received), batch in batches.items():
            for start in range(0, len(batch), ingest.MAX_BATCH):  # a CSV import of a whole screen comes in at once
                stored += await self._append_batch(kind, event_id, source, received, batch[start:start + ingest.MAX_BATCH])
        return ingest.Stored(stored, len(rows) - stored)

    async def append_usual(self, event_id: str, source: str, received: datetime, body: bytes, comments: list[ingest.UsualComment],
                           zone: str) -> ingest.Stored:
        """`append` for a request body `ingest.usual_batch` took: the body goes in as it came (no row
        dicts, nothing encoded again: a feed posts thousands a second); times without an offset are
        in `zone`."""
        keys = [stream_key("comments", event_id), DIRTY, INGESTED + "comments", WAITING + "comments", seen_key("comments", event_id, source),
                funnel_key(event_id, "commented")]
        args = [SEEN_SECONDS, body, source, received.isoformat(), event_id, orjson.dumps([c.message_id for c in comments]),
                orjson.dumps([c.user_id for c in comments]), zone]
        stored = await self._run(self._append_usual, keys, args)
        return ingest.Stored(stored, len(comments) - stored)

    async def _append_batch(self, kind: str, event_id: str, source: str, received: datetime, rows: list[dict[str, Any]]) -> int:
        values = VALUES[kind]
        return await self._script(kind, event_id, source, received, ("b", orjson.dumps([values(r) for r in rows]), ""), *_marks(kind, event_id, rows))

    async def _script(self, kind: str, event_id: str, source: str, received: datetime, batch: tuple[str, bytes, str], ids: list[str],
                      persons: list[str], sets: list[str] | list[list[str]], changes: list[list[tuple[str, int]]]) -> int:
        """The APPEND script for one batch ((its field in the entry, its JSON, the zone of its times
        without an offset)): how many of its items were new."""
        keys = [stream_key(kind, event_id), DIRTY, INGESTED + kind, WAITING + kind, seen_key(kind, event_id, source)]
        field, payload, zone = batch
        args: list[Any] = [SEEN_SECONDS, payload, source, received.isoformat(), event_id, orjson.dumps(ids), orjson.dumps(persons),
                           orjson.dumps(sets), orjson.dumps(changes), field, zone]
        return await self._run(self._append, keys, args)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> int:
        """Run one of the scripts, through the web app's auto-pipeline when there is one."""
        return int(await run_script(self._pipe or self.redis, script, keys, args))

    async def move(self, engine: Engine, kind: str, event_id: str) -> int:
        """Move what waits in the event's stream into the store; how many items were moved."""
        key = stream_key(kind, event_id)
        moved = 0
        while True:
            entries = await self.redis.xrange(key, count=BATCH if kind == "scans" else ENTRIES)
            if not entries:
                return moved
            if kind == "scans":  # counted already, by the scan's own script: only kept here
                await asyncio.to_thread(_store_scans, engine, event_id, entries)
                moved += len(entries)
                await self.redis.xdel(key, *[entry_id for entry_id, _f in entries])
                continue
            per_entry = [_rows_of(kind, event_id, fields) for _id, fields in entries]
            rows = [row for some in per_entry for row in some]
            for start in range(0, len(rows), BATCH):  # counted when acknowledged; stored again harmlessly after a crash here
                await asyncio.to_thread(ingest.store, engine, KINDS[kind], rows[start:start + BATCH])
            new = [new_items(fields, some) for (_id, fields), some in zip(entries, per_entry, strict=True)]
            moved += sum(new)
            done = [x for (entry_id, fields), n in zip(entries, new, strict=True)
                    for x in (entry_id, 0 if _field(fields, "d") is not None else n)]  # an entry from before batches was not counted
            await self._moved(keys=[key, WAITING + kind], args=done)

    async def move_all(self, engine: Engine) -> int:
        """Everything waiting, for every event (the workers' upkeep)."""
        moved = 0
        async for raw in self.redis.scan_iter(match="orch:in:*", count=200):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            _orch, _in, kind, event_id = key.split(":", 3)
            if kind in KINDS or kind == "scans":
                moved += await self.move(engine, kind, event_id)
        return moved
