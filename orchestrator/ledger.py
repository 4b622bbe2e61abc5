"""The send ledger: every message is a row whose unique key makes it go out at most once.

States (open to later channels, which add their own):

    planned ──claim──► sending ──► sent | failed | unknown
       ▲                  │    └──► created ──► sent | failed | skipped   (WeCom tasks: orchestrator.taskwatch)
       └── retry later ◄──┘          planned/sending ──► skipped (opt-out, cap, quiet hours, cancelled)

A row is claimed with one conditional UPDATE (planned -> sending, owner and time set), so two
workers never hold the same row, and the claim names its worker in `claimer`. A row left in
`sending` by a dead worker is resolved by `resolve_orphans`: back to `planned` (marked retried)
when its transport is idempotent, otherwise `unknown` and reported. No index names the state
(see store.Send: each change is a HOT update on PostgreSQL), so open work is found by the step's
rows in id order and the sweep by `claimer`. All calls are synchronous and batched; the worker
runs them in a thread.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.store import Claimer, Event, Send, UtcDateTime, one_trip, reading, sqlite_time, utc_now, writing

SEND = Send.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
CLAIMER = Claimer.__table__  # type: ignore[attr-defined]


# States of a row that count toward the person's caps: sent; a WeCom task created (the guide
# confirms it later); unknown (the request went out and no answer came: it may well have arrived).
# Counts are read from the rows themselves (`counts_of`), so they cannot drift from the outcomes.
COUNTED = ("sent", "created", "unknown")


def key_of(event_id: str, step_id: str, member_id: str, channel: str) -> str:
    return f"{event_id}:{step_id}:{member_id}:{channel}"


def _insert(engine: Engine) -> Any:
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def plan_sends(engine: Engine, event_id: str, step_id: str, rows: Iterable[tuple[str, str, str]], chunk: int = 2000,
               count_day: str | None = None) -> int:
    """Insert a `planned` row per (member, channel, transport) unless it exists; returns rows added.

    `count_day` (the step's day in the event's timezone, '2027-03-20') is given for messages that
    count toward the person's caps (previews and reminders)."""
    ins = _insert(engine)
    added = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal added
        if batch:
            with engine.begin() as conn:
                added += conn.execute(ins(SEND).on_conflict_do_nothing(), batch).rowcount or 0
            batch.clear()

    for member_id, channel, transport in rows:
        batch.append({"event_id": event_id, "step_id": step_id, "member_id": member_id, "channel": channel,
                      "transport": transport, "state": "planned", "attempts": 0, "retried": False,
                      "idempotency_key": key_of(event_id, step_id, member_id, channel), "count_day": count_day})
        if len(batch) >= chunk:
            flush()
    flush()
    return added


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    member_id: str
    channel: str
    transport: str
    attempts: int
    key: str
    retried: bool


# Claiming: one write per batch; the planned rows of a step come in id order from `ix_send_step`.
# On PostgreSQL rows another worker is claiming are skipped, not waited for, and the claimed rows
# come back from RETURNING; the same statement names the worker in `claimer` (with the time of
# its latest claim in the step). On SQLite the rows are marked with the claim's token and read
# back as one JSON document: Python's sqlite3 hands the GIL over at every row it steps through, so
# a row per claimed send set the claiming thread and the sending event loop ping-ponging
# (bench/fanout.py: reading a batch's people as a document instead of 200 rows alone took the
# fan-out from 3,565 to 4,263 sends/s).
#
# A drain passes the last id it claimed (`after`), so each claim starts where its previous one
# ended and walks over no rows it already took; the rows other lanes took meanwhile (a few
# batches) are stepped over. A row planned again behind the cursor (given back, or a retry come
# due) is taken by the drain's successor, which starts from the beginning.
_PICK = """SELECT id FROM send WHERE event_id = :event AND step_id = :step AND state = 'planned' AND id > :after
                                   AND (not_before IS NULL OR not_before <= :now) ORDER BY id LIMIT :limit"""
# The rows are picked once, in a MATERIALIZED CTE: as `id IN (subquery)` the planner may make the
# pick the inner side of a nested loop and run it again for every row it updates, each run finding
# the next planned rows, so one claim took all of them whatever the limit (tests/engine/test_ledger.py).
CLAIM_PG = text(f"""
WITH picked AS MATERIALIZED ({_PICK} FOR UPDATE SKIP LOCKED),
named AS (INSERT INTO claimer (worker, event_id, step_id, dirty, last_at) SELECT :worker, :event, :step, true, :now
          WHERE EXISTS (SELECT FROM picked)
          ON CONFLICT (worker, event_id, step_id) DO UPDATE SET dirty = true, last_at = excluded.last_at)
UPDATE send SET state = 'sending', claimed_by = :worker, claimed_at = :now, attempts = attempts + 1
FROM picked WHERE send.id = picked.id AND send.state = 'planned'
RETURNING send.id, send.member_id, send.channel, send.transport, send.attempts, send.idempotency_key, send.retried
""").bindparams(bindparam("now", type_=UtcDateTime))
CLAIM_SQLITE = text(f"""
UPDATE send SET state = 'sending', claimed_by = :worker, claimed_at = :now, attempts = attempts + 1, claim = :token
WHERE id IN ({_PICK}) AND state = 'planned'
""").bindparams(bindparam("now", type_=UtcDateTime))
NAME_SQLITE = text("""
INSERT INTO claimer (worker, event_id, step_id, dirty, last_at) VALUES (:worker, :event, :step, 1, :now)
ON CONFLICT (worker, event_id, step_id) DO UPDATE SET dirty = 1, last_at = excluded.last_at
""").bindparams(bindparam("now", type_=UtcDateTime))
# read back along the step's index from the claim's start, stopping at its last row
CLAIMED_SQLITE = text("""
SELECT json_group_array(json_array(id, member_id, channel, transport, attempts, idempotency_key, retried)) FROM (
    SELECT id, member_id, channel, transport, attempts, idempotency_key, retried FROM send
    WHERE event_id = :event AND step_id = :step AND id > :after AND claim = :token ORDER BY id LIMIT :claimed)
""")


def claim(bind: Engine | Connection, event_id: str, step_id: str, worker: str, limit: int, after: int = 0) -> list[Claimed]:
    """Take up to `limit` planned rows that are due, atomically, for `worker`: those with ids above
    `after` (the last id of the caller's previous claim), in id order."""
    params: dict[str, Any] = {"worker": worker, "now": utc_now(), "event": event_id, "step": step_id, "limit": limit, "after": after}
    with writing(bind) as conn:
        if conn.dialect.name == "postgresql":
            rows = [tuple(r) for r in conn.execute(CLAIM_PG, params)]
        else:
            params["token"] = secrets.token_hex(8)
            params["claimed"] = conn.execute(CLAIM_SQLITE, params).rowcount
            if not params["claimed"]:
                return []
            conn.execute(NAME_SQLITE, params)
            rows = orjson.loads(conn.execute(CLAIMED_SQLITE, params).scalar_one())
    rows.sort()
    return [Claimed(i, m, ch, tr, att, key, bool(retried)) for i, m, ch, tr, att, key, retried in rows]


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    state: str  # sent | failed | unknown | planned (retry later) | skipped
    provider_id: str | None = None
    error: str | None = None
    not_before: datetime | None = None
    sender: str | None = None  # a created task's: who must confirm it


def give_back(engine: Engine, worker: str, event_id: str, ids: Sequence[int]) -> int:
    """Rows `worker` claimed and did not try to send (its job ran out of time): planned again, the
    claim's attempt not counted, for the next drain; skipped instead if the event has meanwhile
    closed or been cancelled (its close swept the planned rows already)."""
    if not ids:
        return 0
    with engine.begin() as conn:
        state = conn.execute(select(EVENT.c.state).where(EVENT.c.id == event_id)).scalar_one_or_none()
        mine = update(SEND).where(SEND.c.id.in_(list(ids)), SEND.c.state == "sending", SEND.c.claimed_by == worker)
        if state in ("closed", "cancelled"):
            return conn.execute(mine.values(state="skipped", error=f"the event was {state} before it was sent")).rowcount or 0
        return conn.execute(mine.values(state="planned", attempts=SEND.c.attempts - 1)).rowcount or 0


def finish(engine: Engine, worker: str, results: Sequence[Result]) -> int:
    """Record outcomes of rows `worker` holds; a row another process resolved meanwhile is left alone.

    One statement per batch, over a JSON document (on PostgreSQL on an autocommit connection: one
    round trip): a statement per row costs more than the sends it records. What a
    batch counts toward caps needs no write of its own: it is in the outcomes (`counts_of`).
    """
    if not results:
        return 0
    now = utc_now()
    if engine.dialect.name == "postgresql":  # one statement, so one round trip, committing alone
        outcomes = {str(r.id): (r.state, r.provider_id, r.error, sqlite_time(r.not_before), r.sender) for r in results}
        with one_trip(engine) as conn:
            params = {"ids": [r.id for r in results], "outcomes": orjson.dumps(outcomes).decode(), "now": now, "worker": worker}
            return conn.execute(FINISH_PG, params).rowcount or 0
    rows = [(r.id, r.state, r.provider_id, r.error, sqlite_time(r.not_before), r.sender) for r in results]
    with engine.begin() as conn:
        return conn.execute(FINISH_SQLITE, {"rows": orjson.dumps(rows).decode(), "now": now, "worker": worker}).rowcount or 0


# The rows are found by `id = ANY(ids)`, one primary-key probe each, and each takes its outcome
# from a JSON object keyed by id (parsed once, in the CTE; a key is found by binary search). Both
# ways tried before cost more: each row looking for its position among the 200 ids with
# array_position (perf: an eighth of PostgreSQL's CPU in the fan-out); and joining the rows to the
# unnested arrays, which the planner, estimating one row in `sending` for the worker, did by
# reading the whole table for each batch at 10,000 recipients (bench/fanout.py: 212 µs of
# PostgreSQL's CPU a message). `awaiting` is set on created WeCom tasks only and stays NULL on
# every other row, so the update stays HOT (store.Send).
_FINISH_PG = """
WITH o AS MATERIALIZED (SELECT CAST(:outcomes AS jsonb) AS doc)
UPDATE send AS s SET (state, provider_id, error, not_before, sender, sent_at, awaiting) = (
    SELECT v ->> 0, v ->> 1, v ->> 2, CAST(v ->> 3 AS timestamp), v ->> 4,
           CASE WHEN v ->> 0 = 'sent' THEN CAST(:now AS timestamp) END, CASE WHEN v ->> 0 = 'created' THEN true END
    FROM (SELECT o.doc -> CAST(s.id AS text) AS v FROM o) AS x)
WHERE s.id = ANY(CAST(:ids AS bigint[])) AND s.state = 'sending' AND s.claimed_by = :worker
"""
FINISH_PG = text(_FINISH_PG).bindparams(bindparam("now", type_=UtcDateTime))
FINISH_SQLITE = text("""
UPDATE send SET state = json_extract(v.value, '$[1]'), provider_id = json_extract(v.value, '$[2]'),
       error = json_extract(v.value, '$[3]'), not_before = json_extract(v.value, '$[4]'), sender = json_extract(v.value, '$[5]'),
       sent_at = CASE WHEN json_extract(v.value, '$[1]') = 'sent' THEN :now END,
       awaiting = CASE WHEN json_extract(v.value, '$[1]') = 'created' THEN 1 END
FROM json_each(:rows) AS v
WHERE send.id = json_extract(v.value, '$[0]') AND send.state = 'sending' AND send.claimed_by = :worker
""").bindparams(bindparam("now", type_=UtcDateTime))


def skip_open(engine: Engine, event_id: str, reason: str, step_id: str | None = None) -> int:
    """Mark every planned row (of one step, or the whole event) skipped, e.g. on cancel."""
    cond = [SEND.c.event_id == event_id, SEND.c.state == "planned"]
    if step_id is not None:
        cond.append(SEND.c.step_id == step_id)
    with engine.begin() as conn:
        return conn.execute(update(SEND).where(*cond).values(state="skipped", error=reason)).rowcount or 0


def resolve_orphans(engine: Engine, live_workers: set[str], idempotent: dict[str, bool], grace: timedelta = timedelta(seconds=5)) -> dict[tuple[str, str], tuple[int, int]]:
    """Rows in `sending` whose worker is gone: resend where the transport is idempotent, else `unknown`.

    An `unknown` message may well have reached its person, so it counts toward their caps as a
    sent one does (its state is one of COUNTED).

    The workers to look at are those `claimer` names and `live_workers` does not: each claim names
    its worker there (dirty), so the sweep reads only that small table while every worker is alive.
    A gone worker's step is marked clean before its rows are read, so a claim it makes meanwhile
    (it was not gone after all) marks it dirty again and is looked at next time; rows claimed less
    than `grace` ago are left, and their step stays dirty. A gone worker's clean step is forgotten.

    Returns (event, step) -> (rows put back to planned, rows marked unknown), so the caller can
    report them and restart the step's sending.
    """
    cutoff = utc_now() - grace
    out: dict[tuple[str, str], tuple[int, int]] = {}
    with engine.connect() as conn:
        named = conn.execute(select(CLAIMER.c.worker, CLAIMER.c.event_id, CLAIMER.c.step_id, CLAIMER.c.dirty)).all()
    for worker, event_id, step_id, dirty in named:
        if worker in live_workers:
            continue
        key = (CLAIMER.c.worker == worker, CLAIMER.c.event_id == event_id, CLAIMER.c.step_id == step_id)
        if not dirty:
            with engine.begin() as conn:
                conn.execute(CLAIMER.delete().where(*key, CLAIMER.c.dirty.is_(False)))
            continue
        with engine.begin() as conn:
            conn.execute(update(CLAIMER).where(*key).values(dirty=False))
        retried, unknown, young = _resolve(engine, worker, event_id, step_id, idempotent, cutoff)
        if young:  # written again, not updated: another worker's sweep may have forgotten it (clean) meanwhile
            with engine.begin() as conn:
                conn.execute(_insert(engine)(CLAIMER).values(worker=worker, event_id=event_id, step_id=step_id, dirty=True, last_at=young)
                             .on_conflict_do_update(index_elements=["worker", "event_id", "step_id"], set_={"dirty": True}))
        if retried or unknown:
            before = out.get((event_id, step_id), (0, 0))
            out[(event_id, step_id)] = (before[0] + retried, before[1] + unknown)
    return out


LOST = "the worker stopped during the send; the channel has no idempotency key, so it is not repeated"


def _resolve(engine: Engine, worker: str, event_id: str, step_id: str, idempotent: dict[str, bool],
             cutoff: datetime) -> tuple[int, int, datetime | None]:
    """(rows put back to planned, rows marked unknown, the latest claim among rows claimed too
    recently to judge, if any) of the rows `worker` left in `sending` in one step."""
    mine = (SEND.c.event_id == event_id, SEND.c.step_id == step_id, SEND.c.state == "sending", SEND.c.claimed_by == worker)
    with engine.begin() as conn:
        rows = conn.execute(select(SEND.c.id, SEND.c.transport, SEND.c.claimed_at).where(*mine)).all()
        old = [r for r in rows if r.claimed_at is not None and r.claimed_at < cutoff]
        again = [r.id for r in old if idempotent.get(r.transport, False)]
        lost = [r.id for r in old if not idempotent.get(r.transport, False)]
        done = []
        for ids, values in ((again, {"state": "planned", "retried": True, "claimed_by": None}), (lost, {"state": "unknown", "error": LOST})):
            n = 0
            for i in range(0, len(ids), 500):
                n += conn.execute(update(SEND).where(SEND.c.id.in_(ids[i:i + 500]), *mine).values(**values)).rowcount or 0
            done.append(n)
    young = [r.claimed_at for r in rows if r.claimed_at is not None and r.claimed_at >= cutoff]
    return done[0], done[1], max(young, default=None)


def step_counts(engine: Engine, event_id: str) -> dict[str, dict[str, dict[str, int]]]:
    """step -> channel -> state -> rows."""
    out: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    with engine.connect() as conn:
        for step, channel, state, n in conn.execute(
            select(SEND.c.step_id, SEND.c.channel, SEND.c.state, func.count()).where(SEND.c.event_id == event_id)
            .group_by(SEND.c.step_id, SEND.c.channel, SEND.c.state)
        ):
            out[step][channel][state] = n
    return {s: {c: dict(v) for c, v in chans.items()} for s, chans in out.items()}


def open_rows(engine: Engine, event_id: str, step_id: str) -> tuple[int, int, datetime | None]:
    """(planned rows, sending rows, earliest not_before among planned) of one step, read in one
    statement so that both counts are of one moment: read in two, a retry's row going from sending
    back to planned between them was in neither, and its step was closed with the row still to send."""
    planned, sending = SEND.c.state == "planned", SEND.c.state == "sending"
    with engine.connect() as conn:
        n_planned, n_sending, first = conn.execute(
            select(func.count().filter(planned), func.count().filter(sending), func.min(SEND.c.not_before).filter(planned))
            .where(SEND.c.event_id == event_id, SEND.c.step_id == step_id)).one()
    return int(n_planned), int(n_sending), first


def sendable(engine: Engine, event_id: str, horizon: datetime) -> int:
    """Rows of the event being sent now, or planned to go by `horizon` (retries included)."""
    with engine.connect() as conn:
        return int(conn.execute(
            select(func.count()).where(SEND.c.event_id == event_id,
                                       (SEND.c.state == "sending") | ((SEND.c.state == "planned") & (SEND.c.not_before.is_(None) | (SEND.c.not_before <= horizon))))
        ).scalar_one())


def in_flight(engine: Engine, event_id: str) -> int:
    """Rows of the event a worker is sending now."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(SEND.c.event_id == event_id, SEND.c.state == "sending")).scalar_one())


def unknown_rows(engine: Engine, event_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(SEND.c.step_id, SEND.c.member_id, SEND.c.channel, SEND.c.idempotency_key, SEND.c.claimed_at)
            .where(SEND.c.event_id == event_id, SEND.c.state == "unknown").order_by(SEND.c.id).limit(limit)
        ).all()
    return [dict(r._mapping) for r in rows]


def counts_of(bind: Engine | Connection, members: Sequence[str], periods: Sequence[str]) -> dict[tuple[str, str], int]:
    """Messages that count toward caps per (member, period), where any, for the day and month keys
    of `limits.periods` ('d:2027-03-20', 'm:2027-03'): read from the send rows themselves (on SQLite
    as one JSON document, as `claim`)."""
    out: dict[tuple[str, str], int] = {}
    if not members:
        return out
    day_key, month_key = periods
    day, month = day_key.removeprefix("d:"), month_key.removeprefix("m:")
    params: dict[str, Any] = {"day": day, "first": f"{month}-01", "last": f"{month}-31"}
    with reading(bind) as conn:
        for i in range(0, len(members), 500):
            part = list(members[i:i + 500])
            if conn.dialect.name == "sqlite":
                rows: Iterable[Any] = orjson.loads(conn.execute(COUNTS_OF_SQLITE, params | {"members": orjson.dumps(part).decode()}).scalar_one())
            else:
                rows = conn.execute(COUNTS_OF_PG, params | {"members": part})
            for m, on_day, in_month in rows:
                if on_day:
                    out[(m, day_key)] = on_day
                out[(m, month_key)] = in_month
    return out


# On PostgreSQL one index probe per member, whatever the statistics say: the table grows by a row
# a message during a fan-out, faster than autovacuum analyses it, and with plain IN lists the
# planner chose a sequential scan of all of it for every batch (bench/fanout.py, 100,000
# recipients: 15-36 ms a batch at the end instead of ~1 ms). OFFSET 0 keeps the subquery a
# nested loop (not pulled up into a hash join).
_COUNTED_SQL = ", ".join(f"'{s}'" for s in COUNTED)
COUNTS_OF_PG = text(f"""
SELECT m.id, count(*) FILTER (WHERE c.count_day = :day), count(*) FROM unnest(CAST(:members AS text[])) AS m(id)
CROSS JOIN LATERAL (SELECT count_day FROM send WHERE member_id = m.id AND count_day IS NOT NULL
                    AND count_day BETWEEN :first AND :last AND state IN ({_COUNTED_SQL}) OFFSET 0) AS c
GROUP BY m.id
""")
COUNTS_OF_SQLITE = text(f"""
SELECT json_group_array(json_array(member_id, on_day, in_month)) FROM (
    SELECT member_id, sum(count_day = :day) AS on_day, count(*) AS in_month FROM send
    WHERE member_id IN (SELECT value FROM json_each(:members)) AND count_day IS NOT NULL
          AND count_day BETWEEN :first AND :last AND state IN ({_COUNTED_SQL})
    GROUP BY member_id)
""")


def created_tasks(engine: Engine, event_id: str) -> list[tuple[int, str, str, str | None]]:
    """Rows whose platform task waits for a person's confirmation: (id, member, step, task id)."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(SEND.c.id, SEND.c.member_id, SEND.c.step_id, SEND.c.provider_id)
                                               .where(SEND.c.event_id == event_id, SEND.c.awaiting.is_not(None), SEND.c.state == "created"))]


def settle(engine: Engine, outcomes: Sequence[tuple[int, str, str | None]]) -> int:
    """Final states of created rows (sent, failed, skipped) with their reason, no longer awaiting; a
    row settled meanwhile is left alone."""
    if not outcomes:
        return 0
    now = utc_now()
    stmt = (update(SEND).where(SEND.c.id == bindparam("row"), SEND.c.state == "created")
            .values(state=bindparam("new_state"), error=bindparam("reason"), sent_at=bindparam("at"), awaiting=None))
    with engine.begin() as conn:
        done = conn.execute(stmt, [{"row": i, "new_state": s, "reason": e, "at": now if s == "sent" else None} for i, s, e in outcomes])
    return done.rowcount or 0
