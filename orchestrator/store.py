"""The store: tables (sqlmodel), the engine for a `DATABASE_URL`, and migrations (Alembic).

SQLite (a file, WAL) by default, PostgreSQL in production; the same code runs on both.
Datetimes are stored as UTC and come back aware. Bulk work (the send ledger) uses SQLAlchemy
Core statements on these tables; single rows use sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Engine, Index, LargeBinary, Text, UniqueConstraint, create_engine, event, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from orchestrator.errors import ConfigError

UTC = timezone.utc
MIGRATIONS = Path(__file__).parent / "migrations"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no zone of its own)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware one")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def sqlite_time(moment: datetime | None) -> str | None:
    """A time as UtcDateTime stores it in SQLite (naive UTC text), for values passed inside a JSON
    document (statements over json_each, or a JSON object on PostgreSQL, write many rows in one step)."""
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _ts(**kw: Any) -> Any:
    return Field(sa_type=UtcDateTime, **kw)


class Event(SQLModel, table=True):
    """A scheduled event: the playbook frozen at scheduling time, and its clock."""

    id: str = Field(primary_key=True, max_length=64)
    playbook_id: str = Field(max_length=64)
    title: str
    entry: str = Field(description="the playbook's file name inside the bundle")
    playbook_hash: str = Field(max_length=64)
    timezone: str = Field(max_length=64)
    live_start: datetime = _ts()
    live_end: datetime = _ts()
    state: str = Field(default="scheduled", max_length=16)  # scheduled | running | closed | cancelled
    mode: str = Field(default="live", max_length=16)  # live | rehearsal
    revision: int = 1
    speed: float = 1.0
    real_origin: float = 0.0
    virtual_origin: float = 0.0
    audience: int = 0
    poster_key: str | None = Field(default=None, max_length=32)  # the poster page's secret part, made at the poster step
    board_key: str | None = Field(default=None, max_length=32)  # the host board link's token, made at scheduling
    created_at: datetime = _ts(default_factory=utc_now)
    updated_at: datetime = _ts(default_factory=utc_now)


class FrozenPlaybook(SQLModel, table=True):
    """The playbook and its files as scheduled (a zip), apart from the event row that every job reads."""

    __tablename__ = "frozen_playbook"
    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    playbook_hash: str = Field(max_length=64)
    bundle: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Step(SQLModel, table=True):
    """One step of an event's timeline and how far it got."""

    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    step_id: str = Field(primary_key=True, max_length=80)
    stage: str = Field(max_length=24)
    label: str = ""
    at: datetime = _ts()  # event time
    state: str = Field(default="scheduled", max_length=16)  # scheduled | running | sending | done | missed | skipped | cancelled
    revision: int = 1
    audience: int = 0
    note: str | None = None
    started_at: datetime | None = _ts(default=None)  # real time
    finished_at: datetime | None = _ts(default=None)


class Member(SQLModel, table=True):
    """A person of an event's audience (excluded staff and shills are kept, marked, and never sent to)."""

    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    member_id: str = Field(primary_key=True, max_length=64)
    name: str
    segments: str = Field(description="segment ids joined with '|', the member's own segment first")
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = None
    wecom_external_userid: str | None = Field(default=None, max_length=64)
    guide: str | None = Field(default=None, max_length=64)
    excluded: str | None = Field(default=None, max_length=16)  # staff | shill
    tags: str | None = None  # JSON list, as the audience file gave them


class Guide(SQLModel, table=True):
    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    guide_id: str = Field(primary_key=True, max_length=64)
    name: str
    channel_code: str = Field(max_length=64)
    wecom_userid: str | None = Field(default=None, max_length=64)
    contact_code: str | None = None


class ScanCode(SQLModel, table=True):
    """The code a poster's QR carries (`/s/<code>`): which event, guide and poster variant a scan counts for."""

    __table_args__ = (UniqueConstraint("event_id", "guide_id", "variant", name="uq_scancode_once"),)
    code: str = Field(primary_key=True, max_length=32)
    event_id: str = Field(foreign_key="event.id", max_length=64)
    guide_id: str = Field(max_length=64)
    variant: str = Field(max_length=64)
    poster: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))  # PNG, made at the poster step
    poster_at: datetime | None = _ts(default=None)
    poster_hash: str | None = Field(default=None, max_length=64)  # poster.fingerprint of the stored poster


class ScanLog(SQLModel, table=True):
    """Each scan, moved here from Redis by the workers: what the board's counts are rebuilt from."""

    __tablename__ = "scanlog"
    __table_args__ = (UniqueConstraint("event_id", "entry", name="uq_scanlog_once"),)
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(foreign_key="event.id", max_length=64)
    entry: str = Field(max_length=40)  # the Redis stream entry id it came as
    guide_id: str = Field(max_length=64)
    variant: str = Field(max_length=64)
    visitor: str = Field(max_length=64)  # the first-party cookie's random id
    at: datetime = _ts()


class ChatGroup(SQLModel, table=True):
    """A group of the event's pool (活码), in order; the pool fills them one after another.

    Places are taken in Redis (`orchestrator.pool`); this row is the group's definition and QR.
    """

    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    number: int = Field(primary_key=True)
    name: str
    kind: str = Field(max_length=24)  # wechat_group_code | wecom_join_way
    capacity: int
    margin: int
    qr: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    qr_type: str | None = Field(default=None, max_length=16)  # image/png | image/jpeg
    expires_at: datetime | None = _ts(default=None)
    added_at: datetime = _ts(default_factory=utc_now)


class JoinWay(SQLModel, table=True):
    """A WeCom group live code (加入群聊 config) made for one guide of an event; its `state` tells
    which guide a join came through."""

    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    guide_id: str = Field(primary_key=True, max_length=64)
    state: str = Field(max_length=30, index=True)
    config_id: str = Field(max_length=64)
    qr_url: str
    made_at: datetime = _ts(default_factory=utc_now)


class Join(SQLModel, table=True):
    """A person joined one of the event's groups: once per event, whoever reports it again."""

    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    person: str = Field(primary_key=True, max_length=64)  # member id, WeCom external user id, or platform user id
    group_number: int | None = None
    guide_id: str | None = Field(default=None, max_length=64)
    source: str = Field(max_length=16)  # api | wecom
    at: datetime = _ts(default_factory=utc_now)


class DrawSeed(SQLModel, table=True):
    """The event's draw commitment: made at scheduling; the seed stays secret until the event closes."""

    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    seed: str = Field(max_length=64)
    rules: str  # canonical JSON of the draw rules, frozen
    rules_hash: str = Field(max_length=64)
    commitment: str = Field(max_length=64)
    beacon: str | None = Field(default=None, max_length=200)  # a public randomness value mixed in, when entered
    live_ended_at: datetime | None = _ts(default=None)  # the live ended before its planned end: later draws are void
    created_at: datetime = _ts(default_factory=utc_now)


class Comment(SQLModel, table=True):
    """A live comment, stored before it is acknowledged; one per (source, message id)."""

    __table_args__ = (UniqueConstraint("source", "message_id", name="uq_comment_once"), Index("ix_comment_screen", "event_id", "at", "id"))
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(foreign_key="event.id", max_length=64)
    source: str = Field(max_length=32)  # api | bilibili | douyin | wxlivespy | csv
    message_id: str = Field(max_length=128)
    platform: str = Field(max_length=32)
    room: str = Field(max_length=128)
    user_id: str = Field(max_length=128)
    name: str = Field(max_length=128)
    text: str
    at: datetime = _ts()  # when it was posted (event time)
    received_at: datetime = _ts(default_factory=utc_now)


class Payment(SQLModel, table=True):
    """A deposit, order or refund reported by the shop, one per (source, payment id); amounts in fen."""

    # the deposit draw reads only this covering index: (event, kind) then the columns it selects by
    __table_args__ = (UniqueConstraint("source", "payment_id", name="uq_payment_once"),
                      Index("ix_payment_draw", "event_id", "kind", "person", "order_id", "at", "product"))
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(foreign_key="event.id", max_length=64)
    source: str = Field(max_length=32)
    payment_id: str = Field(max_length=128)
    kind: str = Field(max_length=16)  # deposit | refund | order
    order_id: str = Field(max_length=128)
    person: str = Field(max_length=128)
    product: str | None = Field(default=None, max_length=64)
    amount_fen: int
    guide_id: str | None = Field(default=None, max_length=64)  # whose sale: as the shop said, else the guide the person joined through
    at: datetime = _ts()
    received_at: datetime = _ts(default_factory=utc_now)


class RoomVisit(SQLModel, table=True):
    """Someone entered or left the live room, as the platform reported it; one per (source, visit id)."""

    __tablename__ = "roomvisit"
    __table_args__ = (UniqueConstraint("source", "visit_id", name="uq_roomvisit_once"),)
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(foreign_key="event.id", max_length=64)
    source: str = Field(max_length=32)
    visit_id: str = Field(max_length=128)
    kind: str = Field(max_length=8)  # enter | exit
    person: str = Field(max_length=128)
    at: datetime = _ts()
    received_at: datetime = _ts(default_factory=utc_now)


class Draw(SQLModel, table=True):
    """One draw and everything needed to check it: entrants, their hash, winners, the frozen screen."""

    event_id: str = Field(primary_key=True, foreign_key="event.id", max_length=64)
    draw_id: str = Field(primary_key=True, max_length=80)
    kind: str = Field(max_length=16)  # screenshot | deposit
    state: str = Field(max_length=8)  # done | void
    reason: str | None = None
    k: int
    freeze_at: datetime | None = _ts(default=None)
    freeze_offset_ms: int | None = None
    entrants: str  # JSON list, sorted
    entrant_hash: str = Field(max_length=64)
    winners: str  # JSON list, in draw order
    screen: str | None = None  # JSON: the frozen comments (screenshot draws)
    beacon: str | None = Field(default=None, max_length=200)
    redraw_of: str | None = Field(default=None, max_length=80)
    made_at: datetime = _ts(default_factory=utc_now)


class Consent(SQLModel, table=True):
    """A person's consent per channel, global across events; the newest statement wins."""

    member_id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(primary_key=True, max_length=24)
    granted: bool
    source: str | None = None
    at: datetime | None = _ts(default=None)


class OptOut(SQLModel, table=True):
    """Someone said no: by member id or address, for one channel or all ('*'); global across events."""

    __table_args__ = (Index("ix_optout_member", "member_id"), Index("ix_optout_address", "address"))
    id: int | None = Field(default=None, primary_key=True)
    member_id: str | None = Field(default=None, max_length=64)
    address: str | None = Field(default=None, max_length=255)
    channel: str = Field(default="*", max_length=24)
    source: str = Field(max_length=32)
    at: datetime = _ts(default_factory=utc_now)


class Send(SQLModel, table=True):
    """The send ledger: one row per event x step x recipient x channel, sent at most once.

    A message's row changes as it goes (planned, sending, its outcome) and no index names a column
    those changes touch, not even in a partial index's condition: so on PostgreSQL each change is a
    heap-only (HOT) update, written beside the row with no index entry, and the table is filled half
    full so that the new versions fit on the row's page. With `state` in partial indexes every change
    wrote a new entry in each of the table's indexes: bench/fanout.py, PostgreSQL, 100,000
    recipients, the ledger cost 96 µs of CPU a message then, 40 now. Open work is found by the step's
    rows in id order (`ix_send_step`), a worker's claims through `Claimer`, and WeCom tasks awaiting
    their guide through `awaiting`, which only they set.
    """

    __table_args__ = (
        UniqueConstraint("event_id", "step_id", "member_id", "channel", name="uq_send_once"),
        # a step's rows in the order they are claimed: claims go on from the last id they took
        Index("ix_send_step", "event_id", "step_id", "id"),
        # WeCom tasks created and not yet settled by their guide's confirmation (taskwatch, the board)
        Index("ix_send_awaiting", "event_id", sqlite_where=text("awaiting IS NOT NULL"), postgresql_where=text("awaiting IS NOT NULL")),
        # a person's messages that count toward caps, by day: what `ledger.counts_of` reads
        Index("ix_send_counted", "member_id", "count_day", sqlite_where=text("count_day IS NOT NULL"), postgresql_where=text("count_day IS NOT NULL")),
        {"postgresql_with": {"fillfactor": 50}},
    )
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(foreign_key="event.id", max_length=64)
    step_id: str = Field(max_length=80)
    member_id: str = Field(max_length=64)
    channel: str = Field(max_length=24)
    transport: str = Field(max_length=24)
    state: str = Field(default="planned", max_length=16)
    attempts: int = 0
    retried: bool = False
    idempotency_key: str = Field(max_length=200)
    provider_id: str | None = Field(default=None, max_length=128)
    sender: str | None = Field(default=None, max_length=64)  # a WeCom task's: the userid who must confirm it
    error: str | None = None
    claimed_by: str | None = Field(default=None, max_length=64)
    claim: str | None = Field(default=None, max_length=32)  # SQLite: the token of the claim that last took the row (ledger.claim reads its rows back by it; PostgreSQL's RETURNING needs none)
    claimed_at: datetime | None = _ts(default=None)
    not_before: datetime | None = _ts(default=None)  # real time of the next try
    sent_at: datetime | None = _ts(default=None)
    # The day ('2027-03-20', event timezone) of the step's time, on messages to a person that count
    # toward caps (previews and reminders); None on posts into groups, posters and welcomes. A row
    # counts while its state says it may have reached the person (ledger.COUNTED).
    count_day: str | None = Field(default=None, max_length=10)
    awaiting: bool | None = None  # True while a created WeCom task waits for its guide (state 'created'); NULL otherwise, never False


class Claimer(SQLModel, table=True):
    """A worker that claimed sends of a step: how the orphan sweep finds sends left in flight by a
    worker that is gone without an index on the send rows' state (see `Send`). Written with each
    claim; `dirty` while the worker may hold rows in `sending` that nobody has looked at since it
    went; removed once it is gone and clean."""

    worker: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(primary_key=True, max_length=64)
    step_id: str = Field(primary_key=True, max_length=80)
    dirty: bool = True
    last_at: datetime = _ts()  # its latest claim in the step


class SmsReceipt(SQLModel, table=True):
    """A delivery receipt (状态报告) Aliyun pushed for one number of one SendSms call, kept as it came.

    A ledger row's delivery is found by joining: its provider id is the call's BizId, its member's
    phone the number. Receipts may arrive before the send's outcome is recorded, in any order, and
    more than once: kept once per (BizId, number), the first one wins.
    """

    __tablename__ = "smsreceipt"
    biz_id: str = Field(primary_key=True, max_length=128)
    phone: str = Field(primary_key=True, max_length=32)
    delivered: bool
    code: str = Field(max_length=64)  # DELIVERED, or the carrier's reason (e.g. MK:0001, UNDELIV, IC:0015)
    message: str | None = None
    reported_at: datetime | None = _ts(default=None)  # when the carrier reported it (report_time, Beijing time)
    received_at: datetime = _ts(default_factory=utc_now)


class LogEntry(SQLModel, table=True):
    """The append-only event log."""

    __table_args__ = (Index("ix_log_event", "event_id", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=64)
    at: datetime = _ts(default_factory=utc_now)  # real time
    event_time: datetime | None = _ts(default=None)
    kind: str = Field(max_length=32)
    step_id: str | None = Field(default=None, max_length=80)
    message: str = Field(sa_column=Column(Text, nullable=False))
    data: str | None = Field(default=None, sa_column=Column(Text))


@contextmanager
def one_trip(engine: Engine) -> Iterator[Connection]:
    """A pooled connection on which, on PostgreSQL, every statement commits by itself (autocommit):
    no BEGIN, COMMIT or closing ROLLBACK, each a round trip to the server that, under a fan-out's
    load, waits for the server process to be scheduled. So what must be atomic is one statement.
    On SQLite (in this process: nothing to save) a plain connection, transactions as usual."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@contextmanager
def reading(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection to read on: `bind` itself when it is one (several reads share one pool
    checkout: on PostgreSQL each checkout costs a ping), else one from its pool (`one_trip`: reads
    need no transaction around them, each statement sees what was committed when it began)."""
    if isinstance(bind, Connection):
        yield bind
    else:
        with one_trip(bind) as conn:
            yield conn


@contextmanager
def writing(bind: Engine | Connection) -> Iterator[Connection]:
    """A transaction committed at the end: begun on `bind` when it is a connection (not in a
    transaction already), else on one from its pool."""
    if isinstance(bind, Connection):
        with bind.begin():
            yield bind
    else:
        with bind.begin() as conn:
            yield conn


def make_engine(url: str) -> Engine:
    """An engine for `url`: SQLite gets WAL, a busy timeout and foreign keys; PostgreSQL a pool."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=8, max_overflow=8)

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    elif url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url[len("postgres://"):]
    try:
        return create_engine(url, pool_size=5, max_overflow=10, pool_pre_ping=True)
    except Exception as e:  # unknown dialect, missing driver
        raise ConfigError(f"DATABASE_URL cannot be used: {e}") from e


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def open_store(url: str) -> Engine:
    """The engine for `url`, migrated to the newest schema."""
    engine = make_engine(url)
    try:
        migrate(engine)
    except Exception as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"the database at {_safe(url)} cannot be opened or migrated: {type(e).__name__}: {e}") from e
    return engine


def _safe(url: str) -> str:
    from orchestrator.settings import redact

    return redact(url)


METADATA = SQLModel.metadata
