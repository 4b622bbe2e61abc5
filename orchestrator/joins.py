"""Joins: a person entered one of the event's groups, counted once per event.

Platforms that call back (WeCom `change_external_chat`) and those that report through the web API
both end here. A person reported again (a retried callback, a second report) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import datetime

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import Engine, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.clock import Clock
from orchestrator.funnel import Funnel, Seen, key
from orchestrator.recount import by_minute
from orchestrator.store import Event, Join

log = logging.getLogger("orchestrator.joins")

JOIN = Join.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Joined:
    person: str
    group: int | None = None
    guide: str | None = None
    at: datetime | None = None


def record(engine: Engine, event_id: str, joins: list[Joined], source: str) -> tuple[list[Joined], int]:
    """Record joins; (the new ones, how many were known). One statement: all of them or, on error, none."""
    if not joins:
        return [], 0
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with engine.begin() as conn:
        speed, real, virtual = conn.execute(select(EVENT.c.speed, EVENT.c.real_origin, EVENT.c.virtual_origin)
                                            .where(EVENT.c.id == event_id)).one()
        now = Clock(speed, real, virtual).now()  # the event's clock: a rehearsal's joins fall in its own minutes
        joins = [j if j.at else replace(j, at=now) for j in joins]
        rows = [{"event_id": event_id, "person": j.person, "group_number": j.group, "guide_id": j.guide, "source": source,
                 "at": j.at} for j in joins]
        added = {r[0] for r in conn.execute(insert(JOIN).on_conflict_do_nothing().returning(JOIN.c.person), rows).all()}
    new = list({j.person: j for j in reversed(joins) if j.person in added}.values())[::-1]  # a person twice in one batch: the first
    return new, len(joins) - len(new)


def joined(engine: Engine, event_id: str) -> dict[str, int | None]:
    """person -> group number of everyone who joined the event."""
    with engine.connect() as conn:
        return {p: g for p, g in conn.execute(select(JOIN.c.person, JOIN.c.group_number).where(JOIN.c.event_id == event_id))}


async def count_on_board(redis: Redis, event_id: str, new: list[Joined]) -> None:
    """Count recorded joins on the board. They are in the store already (and their welcome planned),
    so Redis being away only delays the live count: the workers' upkeep counts them once it is back
    (`count_missed`)."""
    try:
        await Funnel(redis).count(event_id, "joined", [Seen(j.person, j.guide) for j in new], at=new[0].at if new else None)
    except (RedisConnectionError, RedisTimeoutError) as e:
        log.warning("%s: %d joins recorded but not yet counted on the board (Redis: %s); the workers count them once it is back", event_id, len(new), e)


def _stored_joins(engine: Engine) -> list[tuple[str, int]]:
    """(event, joins stored) of each running event."""
    event, join = Event.__table__, Join.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return [(e, int(n)) for e, n in conn.execute(select(event.c.id, func.count(join.c.person))
                                                     .select_from(event.join(join, join.c.event_id == event.c.id))
                                                     .where(event.c.state == "running").group_by(event.c.id))]


def _joins_of(engine: Engine, event_id: str) -> list[tuple[str, str | None, datetime]]:
    join = Join.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        return [(p, g, at) for p, g, at in conn.execute(select(join.c.person, join.c.guide_id, join.c.at)
                                                        .where(join.c.event_id == event_id).order_by(join.c.at, join.c.person))]


async def count_missed(redis: Redis, engine: Engine) -> int:
    """Count on the board the joins of running events that are stored but were never counted (Redis
    was away when they came: `count_on_board`); how many. Counting is per person, so counting a
    counted join again changes nothing; each is counted in the minute it happened."""
    missed = 0
    for event_id, stored in await asyncio.to_thread(_stored_joins, engine):
        if int(await redis.scard(key(event_id, "joined"))) >= stored:  # type: ignore[misc]
            continue
        rows = await asyncio.to_thread(_joins_of, engine, event_id)
        now_counted = 0
        for at, seen in by_minute((at, Seen(p, g)) for p, g, at in rows):
            now_counted += await Funnel(redis).count(event_id, "joined", seen, at=at)
        if now_counted:
            log.warning("%s: %d joins stored but not counted on the board are counted now", event_id, now_counted)
        missed += now_counted
    return missed
