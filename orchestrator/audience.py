"""An event's audience as the store keeps it: read a chunk at a time or by id, never all at once.

Scheduling writes every member of the frozen playbook to the `member` table (with the segments
they are in, their exclusion as staff or shill, and their tags). Workers read them from there,
so a worker's memory does not grow with the audience: a step's recipients are chosen chunk by
chunk, and a fan-out batch looks up only the people it is sending to.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select, text

from orchestrator.playbook import Member
from orchestrator.store import Member as MemberRow
from orchestrator.store import reading

MEMBER = MemberRow.__table__  # type: ignore[attr-defined]
CHUNK = 5000
_COLUMNS = (MEMBER.c.member_id, MEMBER.c.name, MEMBER.c.segments, MEMBER.c.phone, MEMBER.c.email,
            MEMBER.c.wecom_external_userid, MEMBER.c.guide, MEMBER.c.tags, MEMBER.c.excluded)


@dataclass(frozen=True, slots=True)
class Person:
    """A member of the event's audience as stored."""

    member: Member
    segments: frozenset[str]
    excluded: str | None  # staff | shill: never sent to


def _person(row: Any) -> Person:
    member_id, name, segments, phone, email, wecom, guide, tags, excluded = row
    segs = segments.split("|") if segments else [""]
    member = Member(id=member_id, name=name, segment=segs[0], phone=phone, email=email, wecom_external_userid=wecom,
                    guide=guide, tags=tuple(orjson.loads(tags)) if tags else ())
    return Person(member, frozenset(segs), excluded)


def chunks(engine: Engine, event_id: str, size: int = CHUNK) -> Iterator[list[Person]]:
    """Every member of the event, `size` at a time, in member id order (each chunk its own query)."""
    after: str | None = None
    while True:
        stmt = select(*_COLUMNS).where(MEMBER.c.event_id == event_id)
        if after is not None:
            stmt = stmt.where(MEMBER.c.member_id > after)
        with engine.connect() as conn:
            rows = conn.execute(stmt.order_by(MEMBER.c.member_id).limit(size)).all()
        if not rows:
            return
        yield [_person(r) for r in rows]
        after = rows[-1][0]


def people(bind: Engine | Connection, event_id: str, member_ids: Iterable[str]) -> dict[str, Person]:
    """The stored members among `member_ids` (absent ids are simply not in the result).

    On SQLite as one JSON document: Python's sqlite3 hands the GIL over at every row, which costs
    a fan-out running beside its batches' lookups more than the lookups themselves."""
    ids: Sequence[str] = sorted(set(member_ids))
    out: dict[str, Person] = {}
    with reading(bind) as conn:
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            if conn.dialect.name == "sqlite":
                rows: Iterable[Any] = orjson.loads(conn.execute(PEOPLE_SQLITE, {"event": event_id, "ids": orjson.dumps(part).decode()}).scalar_one())
            else:
                rows = conn.execute(PEOPLE_PG, {"event": event_id, "ids": list(part)})
            for row in rows:
                person = _person(row)
                out[person.member.id] = person
    return out


# On PostgreSQL one primary-key probe per member, whatever the statistics say: an audience is
# written when the event is scheduled and may not be analysed before it is sent to, and then the
# planner took the key's first column only and filtered the event's every member for each batch
# (bench/fanout.py, 100,000 recipients: 15-18 ms a batch; ~1 ms probed). OFFSET 0 keeps it a
# nested loop.
PEOPLE_PG = text("""
SELECT p.member_id, p.name, p.segments, p.phone, p.email, p.wecom_external_userid, p.guide, p.tags, p.excluded
FROM unnest(CAST(:ids AS text[])) AS wanted(id)
CROSS JOIN LATERAL (SELECT * FROM member WHERE event_id = :event AND member_id = wanted.id OFFSET 0) AS p
""")
PEOPLE_SQLITE = text("""
SELECT json_group_array(json_array(member_id, name, segments, phone, email, wecom_external_userid, guide, tags, excluded))
FROM member WHERE event_id = :event AND member_id IN (SELECT value FROM json_each(:ids))
""")
