"""The send ledger: every message is a row whose unique key makes it go out at most once.

States (open to later channels, which add their own):

    planned ──claim──► sending ──► sent | failed | unknown
       ▲                  │    └──► created ──► sent | failed | skipped   (WeCom tasks: orchestrator.taskwatch)
       └── retry later ◄──┘          planned/sending ──► skipped (opt-out, cap, quiet hours, cancelled)

A row is claimed with one conditional UPDATE (planned -> sending, owner and time set), so two
workers never hold the same row. A row left in `sending` by a dead worker is resolved by
`resolve_orphans`: back to `planned` (marked retried) when its transport is idempotent,
otherwise `unknown` and reported. All calls are synchronous and batched; the worker runs them
in a thread.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Connection, Engine, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.limits import periods
from orchestrator.store import Event, Send, SendCount, Step, UtcDateTime, one_trip, reading, sqlite_time, utc_now, writing

SEND = Send.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
COUNT = SendCount.__table__  # type: ignore[attr-defined]


def key_of(event_id: str, step_id: str, member_id: str, channel: str) -> str:
    return f"{event_id}:{step_id}:{member_id}:{channel}"


def _insert(engine: Engine) -> Any:
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def plan_sends(engine: Engine, event_id: str, step_id: str, rows: Iterable[tuple[str, str, str]], chunk: int = 2000) -> int:
    """Insert a `planned` row per (member, channel, transport) unless it exists; returns rows added."""
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
                      "idempotency_key": key_of(event_id, step_id, member_id, channel)})
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


# Claiming: one write per batch; the planned rows of a step come in id order from the partial index.
# On PostgreSQL rows another worker is claiming are skipped, not waited for, and the claimed rows
# come back from RETURNING. On SQLite they are marked with the claim's token and read back as one
# JSON document: Python's sqlite3 hands the GIL over at every row it steps through, so a row per
# claimed send set the claiming thread and the sending event loop ping-ponging (bench/fanout.py:
# reading a batch's people as a document instead of 200 rows alone took the fan-out from 3,565 to
# 4,263 sends/s).
_PICK = """SELECT id FROM send WHERE event_id = :event AND step_id = :step AND state = 'planned'
                                   AND (not_before IS NULL OR not_before <= :now) ORDER BY id LIMIT :limit"""
CLAIM_PG = text(f"""
UPDATE send SET state = 'sending', claimed_by = :worker, claimed_at = :now, attempts = attempts + 1
WHERE id IN ({_PICK} FOR UPDATE SKIP LOCKED) AND state = 'planned'
RETURNING id, member_id, channel, transport, attempts, idempotency_key, retried
""").bindparams(bindparam("now", type_=UtcDateTime))
CLAIM_SQLITE = text(f"""
UPDATE send SET state = 'sending', claimed_by = :worker, claimed_at = :now, attempts = attempts + 1, claim = :token
WHERE id IN ({_PICK}) AND state = 'planned'
""").bindparams(bindparam("now", type_=UtcDateTime))
CLAIMED_SQLITE = text("""
SELECT json_group_array(json_array(id, member_id, channel, transport, attempts, idempotency_key, retried)) FROM send
WHERE event_id = :event AND step_id = :step AND state = 'sending' AND claim = :token
""")


def claim(bind: Engine | Connection, event_id: str, step_id: str, worker: str, limit: int) -> list[Claimed]:
    """Take up to `limit` planned rows that are due, atomically, for `worker`."""
    params: dict[str, Any] = {"worker": worker, "now": utc_now(), "event": event_id, "step": step_id, "limit": limit}
    with writing(bind) as conn:
        if conn.dialect.name == "postgresql":
            rows = [tuple(r) for r in conn.execute(CLAIM_PG, params)]
        else:
            params["token"] = secrets.token_hex(8)
            if not conn.execute(CLAIM_SQLITE, params).rowcount:
                return []
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


def finish(engine: Engine, worker: str, results: Sequence[Result], counts: dict[tuple[str, str], int] | None = None) -> int:
    """Record outcomes of rows `worker` holds; a row another process resolved meanwhile is left alone.

    `counts` (messages sent per (member, period)) are added in the same transaction. Each is one
    statement per batch over arrays (PostgreSQL) or a JSON document (SQLite): a statement per row
    costs more than the sends it records. On PostgreSQL both are one statement on an autocommit
    connection: one round trip instead of four (BEGIN, update, counts, COMMIT).
    """
    if not results and not counts:
        return 0
    now = utc_now()
    if engine.dialect.name == "postgresql":  # one statement, so one round trip, committing alone
        with one_trip(engine) as conn:
            if results:
                params = {"ids": [r.id for r in results], "states": [r.state for r in results], "providers": [r.provider_id for r in results],
                          "errors": [r.error for r in results], "not_befores": [_naive_utc(r.not_before) for r in results],
                          "senders": [r.sender for r in results], "now": now, "worker": worker}
                if counts:
                    params.update(_count_arrays(counts))
                return conn.execute(FINISH_COUNTS_PG if counts else FINISH_PG, params).rowcount or 0
            conn.execute(COUNTS_PG, _count_arrays(counts or {}))
            return 0
    done = 0
    with engine.begin() as conn:
        if results:
            rows = [(r.id, r.state, r.provider_id, r.error, sqlite_time(r.not_before), r.sender) for r in results]
            done = conn.execute(FINISH_SQLITE, {"rows": orjson.dumps(rows).decode(), "now": now, "worker": worker}).rowcount or 0
        if counts:
            _add_counts(conn, "sqlite", counts)
    return done


# One primary-key probe per result, whatever the statistics, and no join: joined to the unnest of
# the results, the planner (on a never-analysed table) read the rows in `sending` through their
# partial index, or the whole table when it was small, and re-ran the unnest for each row it
# found (bench/fanout.py on PostgreSQL, auto_explain: 80-250 ms a batch at 10,000 and 100,000
# recipients). Here the rows are found by `id = ANY` (IS NOT DISTINCT FROM matches no partial
# index) and each takes its values at its position in the arrays: 7 ms a batch, writes included.
_FINISH_PG = """
UPDATE send AS s SET (state, provider_id, error, not_before, sender, sent_at) = (
    SELECT (CAST(:states AS text[]))[p], (CAST(:providers AS text[]))[p], (CAST(:errors AS text[]))[p],
           (CAST(:not_befores AS timestamp[]))[p], (CAST(:senders AS text[]))[p],
           CASE WHEN (CAST(:states AS text[]))[p] = 'sent' THEN CAST(:now AS timestamp) END
    FROM (SELECT array_position(CAST(:ids AS bigint[]), CAST(s.id AS bigint)) AS p) AS x)
WHERE s.id = ANY(CAST(:ids AS bigint[])) AND s.state IS NOT DISTINCT FROM 'sending' AND s.claimed_by IS NOT DISTINCT FROM :worker
"""
_COUNTS_PG = """
INSERT INTO sendcount (member_id, period, count)
SELECT * FROM unnest(CAST(:members AS text[]), CAST(:periods AS text[]), CAST(:counts AS integer[]))
ON CONFLICT (member_id, period) DO UPDATE SET count = sendcount.count + excluded.count
"""
FINISH_PG = text(_FINISH_PG).bindparams(bindparam("now", type_=UtcDateTime))
COUNTS_PG = text(_COUNTS_PG)
# Outcomes and counts in one statement (a data-modifying WITH runs whether or not it is read): atomic
# on an autocommit connection, in one round trip.
FINISH_COUNTS_PG = text(f"WITH counted AS ({_COUNTS_PG}) {_FINISH_PG}").bindparams(bindparam("now", type_=UtcDateTime))
FINISH_SQLITE = text("""
UPDATE send SET state = json_extract(v.value, '$[1]'), provider_id = json_extract(v.value, '$[2]'),
       error = json_extract(v.value, '$[3]'), not_before = json_extract(v.value, '$[4]'), sender = json_extract(v.value, '$[5]'),
       sent_at = CASE WHEN json_extract(v.value, '$[1]') = 'sent' THEN :now END
FROM json_each(:rows) AS v
WHERE send.id = json_extract(v.value, '$[0]') AND send.state = 'sending' AND send.claimed_by = :worker
""").bindparams(bindparam("now", type_=UtcDateTime))
COUNTS_SQLITE = text("""
INSERT INTO sendcount (member_id, period, count)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]') FROM json_each(:rows) WHERE true
ON CONFLICT (member_id, period) DO UPDATE SET count = sendcount.count + excluded.count
""")


def _naive_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(timezone.utc).replace(tzinfo=None)


def skip_open(engine: Engine, event_id: str, reason: str, step_id: str | None = None) -> int:
    """Mark every planned row (of one step, or the whole event) skipped, e.g. on cancel."""
    cond = [SEND.c.event_id == event_id, SEND.c.state == "planned"]
    if step_id is not None:
        cond.append(SEND.c.step_id == step_id)
    with engine.begin() as conn:
        return conn.execute(update(SEND).where(*cond).values(state="skipped", error=reason)).rowcount or 0


def resolve_orphans(engine: Engine, live_workers: set[str], idempotent: dict[str, bool], grace: timedelta = timedelta(seconds=5)) -> dict[tuple[str, str], tuple[int, int]]:
    """Rows in `sending` whose worker is gone: resend where the transport is idempotent, else `unknown`.

    An `unknown` message may well have reached its person, so it counts toward their caps (on the
    day and month of its step, as a sent one does), in the same transaction. Only rows this call
    changed count: two workers resolving at once count each row once.

    Returns (event, step) -> (rows put back to planned, rows marked unknown), so the caller can
    report them and restart the step's sending.
    """
    cutoff = utc_now() - grace
    out: dict[tuple[str, str], tuple[int, int]] = {}
    with engine.begin() as conn:
        rows = conn.execute(
            select(SEND.c.id, SEND.c.transport, SEND.c.claimed_by)
            .where(SEND.c.state == "sending", SEND.c.claimed_at < cutoff)
        ).all()
        orphans = [r for r in rows if r.claimed_by not in live_workers]
        again = [r.id for r in orphans if idempotent.get(r.transport, False)]
        lost = [r.id for r in orphans if not idempotent.get(r.transport, False)]
        changed: dict[str, list[Any]] = {"again": [], "lost": []}
        for name, ids, values in (("again", again, {"state": "planned", "retried": True, "claimed_by": None}),
                                  ("lost", lost, {"state": "unknown", "error": "the worker stopped during the send; the channel has no idempotency key, so it is not repeated"})):
            for i in range(0, len(ids), 500):
                changed[name] += conn.execute(update(SEND).where(SEND.c.id.in_(ids[i:i + 500]), SEND.c.state == "sending").values(**values)
                                              .returning(SEND.c.event_id, SEND.c.step_id, SEND.c.member_id, SEND.c.channel)).all()
        counts = _counts_of_lost(conn, changed["lost"])
        if counts:
            _add_counts(conn, engine.dialect.name, counts)
    for name, found in changed.items():
        for r in found:
            retried, unknown = out.get((r.event_id, r.step_id), (0, 0))
            out[(r.event_id, r.step_id)] = (retried + 1, unknown) if name == "again" else (retried, unknown + 1)
    return out


def _counts_of_lost(conn: Any, lost: Sequence[Any]) -> dict[tuple[str, str], int]:
    """Messages per (member, period) of rows marked unknown: the day and month of their step's time
    in the event's timezone, as `fanout.deliver` counts them (previews and reminders to people;
    posts into groups, posters to guides and welcomes count for nobody)."""
    lost = [r for r in lost if r.channel != "wecom_group"]
    step_table, event_table = Step.__table__, Event.__table__  # type: ignore[attr-defined]
    when: dict[tuple[str, str], tuple[str, str]] = {}
    for event_id, step_id in {(r.event_id, r.step_id) for r in lost}:
        row = conn.execute(select(step_table.c.at, step_table.c.stage, event_table.c.timezone)
                           .join(event_table, event_table.c.id == step_table.c.event_id)
                           .where(step_table.c.event_id == event_id, step_table.c.step_id == step_id)).first()
        if row is not None and row.stage in ("preview", "reminder"):
            at = row.at if row.at.tzinfo else row.at.replace(tzinfo=timezone.utc)
            when[(event_id, step_id)] = periods(at.astimezone(ZoneInfo(row.timezone)))
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in lost:
        for period in when.get((r.event_id, r.step_id), ()):
            counts[(r.member_id, period)] += 1
    return dict(counts)


def _count_arrays(counts: dict[tuple[str, str], int]) -> dict[str, list[Any]]:
    """COUNTS_PG's parameters (sorted: concurrent upserts take their rows' locks in one order)."""
    items = sorted(counts.items())
    return {"members": [m for (m, _p), _n in items], "periods": [p for (_m, p), _n in items], "counts": [n for _k, n in items]}


def _add_counts(conn: Any, dialect: str, counts: dict[tuple[str, str], int]) -> None:
    """Add messages per (member, period) to the stored counts (one statement)."""
    if dialect == "postgresql":
        conn.execute(COUNTS_PG, _count_arrays(counts))
    else:
        conn.execute(COUNTS_SQLITE, {"rows": orjson.dumps([(m, p, n) for (m, p), n in sorted(counts.items())]).decode()})


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
    """(planned rows, sending rows, earliest not_before among planned) of one step."""
    with engine.connect() as conn:
        planned, earliest = conn.execute(
            select(func.count(), func.min(SEND.c.not_before)).where(SEND.c.event_id == event_id, SEND.c.step_id == step_id, SEND.c.state == "planned")
        ).one()
        sending = conn.execute(
            select(func.count()).where(SEND.c.event_id == event_id, SEND.c.step_id == step_id, SEND.c.state == "sending")
        ).scalar_one()
    return int(planned), int(sending), earliest


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
    """Messages stored as sent per (member, period), where any (on SQLite as one JSON document, as `claim`)."""
    out: dict[tuple[str, str], int] = {}
    if not members:
        return out
    with reading(bind) as conn:
        for i in range(0, len(members), 500):
            part = list(members[i:i + 500])
            if conn.dialect.name == "sqlite":
                rows: Iterable[Any] = orjson.loads(conn.execute(COUNTS_OF_SQLITE, {"members": orjson.dumps(part).decode(),
                                                                                   "periods": orjson.dumps(list(periods)).decode()}).scalar_one())
            else:
                rows = conn.execute(COUNTS_OF_PG, {"members": part, "periods": list(periods)})
            for m, p, n in rows:
                out[(m, p)] = n
    return out


# On PostgreSQL one index probe per member, whatever the statistics say: the table grows by two
# rows a message during a fan-out, faster than autovacuum analyses it, and with the plain IN lists
# the planner chose a sequential scan of all of it for every batch (bench/fanout.py, 100,000
# recipients: 15-36 ms a batch at the end instead of ~1 ms). OFFSET 0 keeps the subquery a
# nested loop (not pulled up into a hash join).
COUNTS_OF_PG = text("""
SELECT c.member_id, c.period, c.count FROM unnest(CAST(:members AS text[])) AS m(id)
CROSS JOIN LATERAL (SELECT member_id, period, count FROM sendcount
                    WHERE member_id = m.id AND period = ANY(CAST(:periods AS text[])) OFFSET 0) AS c
""")
COUNTS_OF_SQLITE = text("""
SELECT json_group_array(json_array(member_id, period, count)) FROM sendcount
WHERE member_id IN (SELECT value FROM json_each(:members)) AND period IN (SELECT value FROM json_each(:periods))
""")


def created_tasks(engine: Engine, event_id: str) -> list[tuple[int, str, str, str | None]]:
    """Rows whose platform task waits for a person's confirmation: (id, member, step, task id)."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(SEND.c.id, SEND.c.member_id, SEND.c.step_id, SEND.c.provider_id)
                                               .where(SEND.c.event_id == event_id, SEND.c.state == "created"))]


def settle(engine: Engine, outcomes: Sequence[tuple[int, str, str | None]]) -> int:
    """Final states of created rows (sent, failed, skipped) with their reason; a row settled meanwhile is left alone."""
    if not outcomes:
        return 0
    now = utc_now()
    stmt = (update(SEND).where(SEND.c.id == bindparam("row"), SEND.c.state == "created")
            .values(state=bindparam("new_state"), error=bindparam("reason"), sent_at=bindparam("at")))
    with engine.begin() as conn:
        done = conn.execute(stmt, [{"row": i, "new_state": s, "reason": e, "at": now if s == "sent" else None} for i, s, e in outcomes])
    return done.rowcount or 0
