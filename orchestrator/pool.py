"""The group pool (活码): one code that sends each scanner to the first group with room.

Groups are filled strictly in order. A scanner takes a place in the current group; when its count
reaches the group's margin (190 of 200, say) the pool moves on, before the group is full. Taking a
place is one Redis script, so any number of concurrent scans in any number of web processes can
never put more than `margin` people into a group, and a person who scans again is sent to the same
group without taking a second place. Groups whose code has expired are passed over.

The store keeps each group's definition and QR (`ChatGroup`); Redis keeps the places taken. The
pool is copied into Redis the first time it is needed (and again if Redis lost it), by a script
that writes only what is missing, so two processes loading it at once cannot disagree. Like arq's
jobs, the places live in Redis: run it with persistence.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis
from sqlalchemy import Engine, func, insert, select

from orchestrator.autopipeline import AutoPipeline, run_script
from orchestrator.errors import OrchestratorError
from orchestrator.store import ChatGroup, utc_now

GROUP = ChatGroup.__table__  # type: ignore[attr-defined]

# The tally's ops, counted first by ASSIGN (and alone by TALLY): ARGV[3] holds them as one argument
# (few arguments are cheaper to send), ops separated by \30, each "<op>\31<key index>\31<field>":
# 'h' HINCRBY key field 1; 'p' PFADD key field; 's' SADD key field, remembering whether it was new;
# 'm' HINCRBY key field 1 only if the last 's' was new (a first time per minute); 'a' SADD, plainly;
# 'x' XADD key * d field (a log entry).
TALLY_OPS = """
local last = 0
if ARGV[3] then
  for op, k, field in string.gmatch(ARGV[3], '([hpsmax])\\31(%d+)\\31([^\\30]*)') do
    local key = KEYS[tonumber(k)]
    if op == 'h' then redis.call('HINCRBY', key, field, 1)
    elseif op == 'p' then redis.call('PFADD', key, field)
    elseif op == 's' then last = redis.call('SADD', key, field)
    elseif op == 'm' then if last == 1 then redis.call('HINCRBY', key, field, 1) end
    elseif op == 'x' then redis.call('XADD', key, '*', 'd', field)
    else redis.call('SADD', key, field) end
  end
end
"""
TALLY = TALLY_OPS + "return 1"

# KEYS: pool hash, who hash, then the tally's keys. ARGV: visitor, now (epoch seconds), the tally.
# Returns {group, new (1) or again (0), count} or {0, 0, 0} when every group is full or expired,
# or {-1, 0, 0} when the pool is not in Redis yet.
ASSIGN = TALLY_OPS + """
local g = redis.call('HGET', KEYS[2], ARGV[1])
if g then
  return {tonumber(g), 0, tonumber(redis.call('HGET', KEYS[1], 'count:' .. g) or '0')}
end
local n = redis.call('HGET', KEYS[1], 'n')
if not n then return {-1, 0, 0} end
n = tonumber(n)
local now = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], 'current') or '1')
while cur <= n do
  local margin = tonumber(redis.call('HGET', KEYS[1], 'margin:' .. cur) or '0')
  local count = tonumber(redis.call('HGET', KEYS[1], 'count:' .. cur) or '0')
  local expires = tonumber(redis.call('HGET', KEYS[1], 'expires:' .. cur) or '0')
  if count < margin and (expires == 0 or expires > now) then
    count = redis.call('HINCRBY', KEYS[1], 'count:' .. cur, 1)
    redis.call('HSET', KEYS[2], ARGV[1], cur)
    if count >= margin then redis.call('HSET', KEYS[1], 'current', cur + 1) end
    return {cur, 1, count}
  end
  cur = cur + 1
  redis.call('HSET', KEYS[1], 'current', cur)
end
return {0, 0, 0}
"""

# KEYS: pool hash. ARGV: number, margin, expires, [number, margin, expires, ...].
# Adds groups the pool does not have yet (fields only written where missing) and raises `n`.
LOAD = """
for i = 1, #ARGV, 3 do
  local num = ARGV[i]
  redis.call('HSETNX', KEYS[1], 'margin:' .. num, ARGV[i + 1])
  redis.call('HSETNX', KEYS[1], 'expires:' .. num, ARGV[i + 2])
  redis.call('HSETNX', KEYS[1], 'count:' .. num, 0)
  local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
  if tonumber(num) > n then redis.call('HSET', KEYS[1], 'n', num) end
end
redis.call('HSETNX', KEYS[1], 'current', 1)
return tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
"""

PNG = b"\x89PNG\r\n\x1a\n"
JPEG = b"\xff\xd8\xff"


class BadGroup(OrchestratorError):
    """A group that cannot join the pool (not an image, margin above capacity, ...)."""


def image_type(data: bytes) -> str | None:
    """The MIME type of a PNG or JPEG image, from its first bytes; None for anything else."""
    if data.startswith(PNG):
        return "image/png"
    if data.startswith(JPEG):
        return "image/jpeg"
    return None


@dataclass(frozen=True, slots=True)
class Tally:
    """Counters to bump in the same script that takes a place (a scan's counts): one command to
    Redis instead of one per counter. `keys` follow the two of the pool (KEYS[3] on); `packed` is
    the ops as the script's one argument (see TALLY_OPS), built by `pack`."""

    keys: tuple[str, ...]
    packed: str

    @staticmethod
    def pack(ops: tuple[str, ...]) -> str:
        """(op, 1-based index into the tally's keys, field) triples, flattened, as the script reads them."""
        return "\x1e".join(f"{ops[i]}\x1f{int(ops[i + 1]) + 2}\x1f{ops[i + 2]}" for i in range(0, len(ops), 3))


@dataclass(frozen=True, slots=True)
class Place:
    """Where the pool sent a scanner: `group` 0 means every group is full (or its code expired)."""

    group: int
    new: bool  # False: this person had a place already (scanned before)
    count: int  # places taken in that group, this one included


@dataclass(frozen=True, slots=True)
class Health:
    """What the pool has left: places before it runs out, groups whose code expires soon, the current group."""

    places_left: int
    expiring: list[int]
    current: int


def _keys(event_id: str) -> list[str]:
    return [f"orch:pool:{event_id}", f"orch:pool:{event_id}:who"]


class Pool:
    """The pool of every event, in Redis, loaded from the store when needed."""

    def __init__(self, redis: Redis, engine: Engine, pipe: AutoPipeline | None = None) -> None:
        self.redis = redis
        self.engine = engine
        self._assign = redis.register_script(ASSIGN)
        self._load = redis.register_script(LOAD)
        self._tally = redis.register_script(TALLY)
        self._loading: dict[str, asyncio.Lock] = {}
        self._call: Redis | AutoPipeline = pipe or redis  # the web app's: every scan calls a script, written together with the others

    async def assign(self, event_id: str, visitor: str, now: datetime | None = None, tally: Tally | None = None) -> Place:
        """A place for `visitor` in the event's pool (the same one if they have one).

        `tally` is counted by the same script, once, whatever the answer (one round trip to Redis).
        """
        at = int((now or utc_now()).timestamp())
        keys = _keys(event_id)
        extra_keys, ops = (list(tally.keys), [tally.packed]) if tally is not None else ([], [])
        answer = await run_script(self._call, self._assign, keys + extra_keys, [visitor, str(at), *ops])
        for _attempt in range(2):
            group, new, count = answer
            if group != -1:
                return Place(int(group), bool(new), int(count))
            await self.load(event_id)
            answer = await self._assign(keys=keys, args=[visitor, at])  # counted already
        return Place(0, False, 0)  # the event has no groups at all

    async def tally(self, tally: Tally) -> None:
        """Count a tally alone (no place taken)."""
        keys = ["-", "-", *tally.keys]
        await run_script(self._call, self._tally, keys, ["-", "-", tally.packed])

    async def load(self, event_id: str) -> int:
        """Copy the event's groups into Redis where they are missing; returns how many groups it has."""
        lock = self._loading.setdefault(event_id, asyncio.Lock())
        async with lock:  # the first scans of a burst all find the pool missing: one of them loads it
            if await self.redis.hexists(_keys(event_id)[0], "n"):  # type: ignore[misc]
                return int(await self.redis.hget(_keys(event_id)[0], "n"))  # type: ignore[misc]
            return await self.refresh(event_id)

    async def refresh(self, event_id: str) -> int:
        """Copy groups added to the store since the pool was loaded (`groups add`)."""
        groups = await asyncio.to_thread(_pool_rows, self.engine, event_id)
        args = [v for number, margin, expires_at in groups for v in (number, margin, int(expires_at.timestamp()) if expires_at else 0)]
        return int(await self._load(keys=_keys(event_id)[:1], args=args)) if args else 0

    async def health(self, event_id: str, now: datetime, soon: float = 86400.0) -> Health | None:
        """Places left and codes expiring within `soon` seconds; None while the pool is not in Redis."""
        fields = await self.redis.hgetall(_keys(event_id)[0])  # type: ignore[misc]
        pool = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in fields.items()}
        if "n" not in pool:
            return None
        at = now.timestamp()
        left, expiring, current = 0, [], pool.get("current", 1)
        for number in range(1, pool["n"] + 1):
            margin, count, expires = pool.get(f"margin:{number}", 0), pool.get(f"count:{number}", 0), pool.get(f"expires:{number}", 0)
            usable = expires == 0 or expires > at
            if number >= current and usable:
                left += max(0, margin - count)
                if expires and expires - at <= soon and count < margin:
                    expiring.append(number)
        return Health(left, expiring, min(current, pool["n"]))

    async def counts(self, event_id: str) -> dict[int, int]:
        """Places taken per group number."""
        fields = await self.redis.hgetall(_keys(event_id)[0])  # type: ignore[misc]
        out: dict[int, int] = {}
        for k, v in fields.items():
            key = k.decode() if isinstance(k, bytes) else k
            if key.startswith("count:"):
                out[int(key[6:])] = int(v)
        return dict(sorted(out.items()))


def _pool_rows(engine: Engine, event_id: str) -> list[tuple[int, int, datetime | None]]:
    with engine.connect() as conn:
        return [(n, m, e) for n, m, e in conn.execute(select(GROUP.c.number, GROUP.c.margin, GROUP.c.expires_at)
                                                      .where(GROUP.c.event_id == event_id).order_by(GROUP.c.number))]


def groups_of(engine: Engine, event_id: str) -> list[ChatGroup]:
    with engine.connect() as conn:
        rows = conn.execute(select(GROUP).where(GROUP.c.event_id == event_id).order_by(GROUP.c.number)).all()
    return [ChatGroup(**{k: v for k, v in r._mapping.items() if k != "qr"}) for r in rows]


def group_qr(engine: Engine, event_id: str, number: int) -> tuple[bytes, str] | None:
    with engine.connect() as conn:
        row = conn.execute(select(GROUP.c.qr, GROUP.c.qr_type).where(GROUP.c.event_id == event_id, GROUP.c.number == number)).first()
    return (row.qr, row.qr_type) if row is not None and row.qr else None


def group_values(name: str, qr: bytes | None, *, capacity: int, margin: int, expires_at: datetime | None,
                 kind: str = "wechat_group_code", where: str = "the QR") -> dict[str, object]:
    """A group's row, checked (BadGroup says what is wrong); the caller adds event_id and number."""
    if margin > capacity:
        raise BadGroup(f"margin {margin} is above the capacity {capacity}: the pool must move on before a group is full")
    if margin < 1:
        raise BadGroup(f"margin {margin}: at least one person must fit")
    qr_type = None
    if qr is not None:
        qr_type = image_type(qr)
        if qr_type is None:
            raise BadGroup(f"{where} is not a PNG or JPEG image (it starts with {qr[:8]!r}); upload the group's QR code picture")
    if expires_at is not None and expires_at.tzinfo is None:
        raise BadGroup("the expiry needs a timezone")
    return {"name": name, "kind": kind, "capacity": capacity, "margin": margin, "qr": qr, "qr_type": qr_type,
            "expires_at": expires_at, "added_at": utc_now()}


def add_group(engine: Engine, event_id: str, name: str, qr: bytes | None, *, capacity: int, margin: int,
              expires_at: datetime | None, kind: str = "wechat_group_code", where: str = "the QR") -> int:
    """Append a group to the event's pool in the store; returns its number. Redis picks it up with `Pool.load`."""
    values = group_values(name, qr, capacity=capacity, margin=margin, expires_at=expires_at, kind=kind, where=where)
    with engine.begin() as conn:
        number = int(conn.execute(select(func.coalesce(func.max(GROUP.c.number), 0)).where(GROUP.c.event_id == event_id)).scalar_one()) + 1
        conn.execute(insert(GROUP).values(event_id=event_id, number=number, **values))
    return number
