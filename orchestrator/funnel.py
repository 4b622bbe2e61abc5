"""The event's funnel, counted per unique person in Redis: reached → scanned → joined → reminded →
commented → deposited → ordered, and GMV; also per guide, per poster variant and per minute.

A person is a member of a Redis set per step (exact, not estimated), so a person counts once per
step however often they act, and a replayed event changes nothing. The first time a person enters a
step, the minute's count goes up. Whoever sees a step happen counts it (the scan route, the join
recorders, the fan-out, the mover of ingested comments and payments) and marks the event dirty; the
board's publisher turns dirty events into snapshots. `rebuild` recounts everything from the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from orchestrator.autopipeline import AutoPipeline, run_script

STEPS = ("reached", "scanned", "joined", "reminded", "entered", "commented", "deposited", "ordered")

PER_MINUTE = ("scanned", "joined")  # steps counted per minute (the board's and the report's chart); the others come in batches, counted as sets
DIRTY = "orch:f:dirty"  # events whose figures changed since the last snapshot

# KEYS: step set, minute hash, the dirty set, then per item its extra sets (guide, variant).
# ARGV: minute, event id, then per item: person, number of extra sets. Returns how many were new.
COUNT = """
local new, k, i = 0, 4, 3
while i <= #ARGV do
  local person, extra = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('SADD', KEYS[1], person) == 1 then
    new = new + 1
    redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  end
  for _ = 1, extra do
    redis.call('SADD', KEYS[k], person)
    k = k + 1
  end
  i = i + 2
end
redis.call('SADD', KEYS[3], ARGV[2])
return new
"""


def key(event_id: str, step: str, part: str = "") -> str:
    return f"orch:f:{event_id}:{step}" + (f":{part}" if part else "")


@dataclass(frozen=True, slots=True)
class Seen:
    person: str
    guide: str | None = None
    variant: str | None = None


def _count_call(event_id: str, step: str, seen: Sequence[Seen], at: datetime | None) -> tuple[list[str], list[Any]]:
    """COUNT's keys and arguments for people reaching `step` (in the minute of `at`, if given)."""
    minute = (at.strftime("%Y-%m-%dT%H:%M") if at else "")
    keys = [key(event_id, step), key(event_id, step, "m"), DIRTY]
    args: list[Any] = [minute, event_id]
    for s in seen:
        extra = [key(event_id, step, f"g:{s.guide}")] if s.guide else []
        extra += [key(event_id, step, f"v:{s.variant}")] if s.variant else []
        keys += extra
        args += [s.person, len(extra)]
    return keys, args


class Funnel:
    def __init__(self, redis: Redis, pipe: AutoPipeline | None = None) -> None:
        self.redis = redis
        self._count = redis.register_script(COUNT)
        self._call: Redis | AutoPipeline = pipe or redis  # a worker's: a batch's count packed in C (see limits.Caps)

    async def count(self, event_id: str, step: str, seen: Sequence[Seen], at: datetime | None = None) -> int:
        """Count people reaching `step` (once each); how many were new to it."""
        if not seen:
            return 0
        keys, args = _count_call(event_id, step, seen, at)
        return int(await run_script(self._call, self._count, keys, args))

    async def replace(self, event_id: str, reached: int, counts: Iterable[tuple[str, Sequence[Seen], datetime | None]],
                      gmv: Iterable[tuple[str | None, int]]) -> None:
        """The event's figures made anew from `counts` ((step, people, minute or None), in the order
        they happened) and `gmv` ((guide or None, fen)), in one transaction: a snapshot taken
        meanwhile sees the old figures or the new ones, never a board emptied half-way."""
        sha = await self.redis.script_load(COUNT)
        old = [k async for k in self.redis.scan_iter(match=f"orch:f:{event_id}:*", count=500)]
        async with self.redis.pipeline(transaction=True) as pipe:
            if old:
                pipe.delete(*old)
            pipe.set(key(event_id, "reached", "n"), reached)
            for step, seen, at in counts:
                if seen:
                    keys, args = _count_call(event_id, step, seen, at)
                    pipe.evalsha(sha, len(keys), *keys, *args)
            for guide, fen in gmv:
                if fen:
                    pipe.incrby(key(event_id, "gmv"), fen)
                    if guide:
                        pipe.incrby(key(event_id, "gmv", f"g:{guide}"), fen)
            pipe.sadd(DIRTY, event_id)
            await pipe.execute()

    async def set_reached(self, event_id: str, people: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key(event_id, "reached", "n"), people)
            pipe.sadd(DIRTY, event_id)
            await pipe.execute()

    async def figures(self, event_id: str, guides: Iterable[str], variants: Iterable[str]) -> dict[str, Any]:
        """The counts a snapshot shows: totals, per guide, per variant, per minute, GMV (fen)."""
        guides, variants = list(guides), list(variants)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(key(event_id, "reached", "n"))
            for step in STEPS[1:]:
                pipe.scard(key(event_id, step))
            for g in guides:
                for step in ("scanned", "joined", "deposited", "ordered"):
                    pipe.scard(key(event_id, step, f"g:{g}"))
                pipe.get(key(event_id, "gmv", f"g:{g}"))
            for v in variants:
                for step in ("scanned", "joined"):
                    pipe.scard(key(event_id, step, f"v:{v}"))
            for step in PER_MINUTE:
                pipe.hgetall(key(event_id, step, "m"))
            pipe.get(key(event_id, "gmv"))
            answers = await pipe.execute()
        it = iter(answers)
        totals = {"reached": int(next(it) or 0)} | {step: int(next(it)) for step in STEPS[1:]}
        per_guide = {}
        for g in guides:
            row = {step: int(next(it)) for step in ("scanned", "joined", "deposited", "ordered")}
            row["gmv_fen"] = int(next(it) or 0)
            per_guide[g] = row
        per_variant = {v: {step: int(next(it)) for step in ("scanned", "joined")} for v in variants}
        per_minute = {}
        for step in PER_MINUTE:
            raw = next(it)
            per_minute[step] = {(k.decode() if isinstance(k, bytes) else k): int(n) for k, n in raw.items() if k not in (b"", "")}
        return {"totals": totals, "gmv_fen": int(next(it) or 0), "guides": per_guide, "variants": per_variant, "minutes": per_minute}

    async def mark_dirty(self, event_id: str) -> None:
        """Have the publisher send the event's snapshot again (something outside the counters changed)."""
        await self.redis.sadd(DIRTY, event_id)  # type: ignore[misc]

    async def take_dirty(self) -> list[str]:
        """The events that changed since the last call (each taken by one caller)."""
        taken = await self.redis.spop(DIRTY, 1000)  # type: ignore[misc]
        return sorted(t.decode() if isinstance(t, bytes) else str(t) for t in (taken or []))

    async def clear(self, event_id: str) -> None:
        keys = [k async for k in self.redis.scan_iter(match=f"orch:f:{event_id}:*", count=500)]
        if keys:
            await self.redis.delete(*keys)
