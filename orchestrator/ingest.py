"""What comes in from outside for the draws: live comments and payments (deposits, refunds, orders).

Every item is checked first; a batch with one bad item is refused whole (`BadInput` names the
item and field) and nothing is stored. Items are stored in one transaction before anyone answers
(durable before acknowledged) and are idempotent on (source, id): a redelivered item is counted
once. Times are ISO 8601 (an offset, or the event's timezone) or Unix epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import msgspec
import orjson
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.errors import OrchestratorError
from orchestrator.store import Comment, Payment, RoomVisit, UtcDateTime, sqlite_time, utc_now

COMMENT = Comment.__table__  # type: ignore[attr-defined]
PAYMENT = Payment.__table__  # type: ignore[attr-defined]
VISIT = RoomVisit.__table__  # type: ignore[attr-defined]
MAX_BATCH = 1000
PLATFORMS = {"wechat_channels", "douyin", "bilibili", "taobao", "kuaishou", "other"}
KINDS = {"deposit", "refund", "order"}


class BadInput(OrchestratorError):
    def __init__(self, message: str, at: str) -> None:
        super().__init__(message)
        self.at = at


@dataclass(frozen=True, slots=True)
class Stored:
    stored: int
    duplicates: int


def moment(value: Any, tz: ZoneInfo, at: str) -> datetime:
    """A time from ISO 8601 (naive: the event's timezone) or Unix epoch milliseconds, in UTC."""
    if isinstance(value, bool):
        raise BadInput("'time' must be ISO 8601 or Unix milliseconds", at)
    if isinstance(value, int | float):
        if not 1e12 <= value < 1e14:
            raise BadInput(f"'time' {value} is not Unix milliseconds (13 digits)", at)
        return datetime.fromtimestamp(value / 1000, timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadInput(f"'time' {value[:40]!r} is not ISO 8601 (2026-12-05T20:00:03+08:00)", at) from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)).astimezone(timezone.utc)
    raise BadInput("'time' is missing: ISO 8601 or Unix milliseconds", at)


def _text(item: dict[str, Any], key: str, at: str, *, limit: int, required: bool = True, empty: bool = False) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise BadInput(f"'{key}' must be a {'non-empty ' if not empty else ''}string", f"{at}.{key}")
    if len(value) > limit:
        raise BadInput(f"'{key}' has {len(value)} characters; at most {limit}", f"{at}.{key}")
    return value


def _items(body: Any, key: str, fields: set[str]) -> tuple[list[dict[str, Any]], Callable[[int], str]]:
    """The items of a request of one item or {key: [...]}, every one an object with known fields,
    and where the i-th is ("comments[3]", or "body" for a single item) for errors."""
    batch = isinstance(body, dict) and key in body
    items = body.get(key) if batch else [body]

    def where(i: int) -> str:
        return f"{key}[{i}]" if batch else "body"

    if not isinstance(items, list) or not items:
        raise BadInput(f"expected one object or {{\"{key}\": [...]}} with at least one", "body")
    if len(items) > MAX_BATCH:
        raise BadInput(f"at most {MAX_BATCH} per request, got {len(items)}", "body")
    for i, item in enumerate(items):
        if type(item) is not dict or not fields.issuperset(item):
            if not isinstance(item, dict):
                raise BadInput("each item must be an object", where(i))
            unknown = set(item) - fields
            raise BadInput(f"unknown field {sorted(unknown)[0]!r}; an item has {', '.join(sorted(fields))}", where(i))
    return items, where


COMMENT_FIELDS = {"platform", "room", "message_id", "user_id", "name", "text", "time"}


def _plain(value: Any, limit: int) -> bool:
    """A string within `limit` with something besides blanks."""
    return type(value) is str and 0 < len(value) <= limit and not value.isspace()


def usual_comment(item: dict[str, Any], tz: ZoneInfo) -> tuple[Any, ...] | None:
    """(platform, room, message_id, user_id, name, text, at) of a usual comment, checked in a few
    comparisons (feeds send thousands a second); None for any other, which `checked_comment` takes
    field by field and names what is wrong. Both give the same row for any item this accepts."""
    get = item.get
    platform, room, message_id, user_id, name, text, when = (
        get("platform"), get("room", ""), get("message_id"), get("user_id"), get("name", ""), get("text"), get("time"))
    if not (type(platform) is str and platform in PLATFORMS and _plain(message_id, 128) and _plain(user_id, 128)
            and type(room) is str and len(room) <= 128 and type(name) is str and len(name) <= 128
            and type(text) is str and len(text) <= 2000 and type(when) is str):
        return None
    try:
        at = datetime.fromisoformat(when)
    except ValueError:
        return None
    return platform, room, message_id, user_id, name, text, at if at.tzinfo else at.replace(tzinfo=tz)  # in UTC when stored


Short = Annotated[str, msgspec.Meta(max_length=128)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class UsualComment(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A comment as feeds send nearly all of them, checked while it is decoded (`usual_batch`)."""

    platform: Literal["wechat_channels", "douyin", "bilibili", "taobao", "kuaishou", "other"]
    message_id: Id
    user_id: Id
    text: Annotated[str, msgspec.Meta(max_length=2000)]
    time: str  # parsed by datetime.fromisoformat, as `usual_comment` does
    room: Short = ""
    name: Short = ""


class _UsualBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    comments: Annotated[list[UsualComment], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


_USUAL_BATCH = msgspec.json.Decoder(_UsualBatch)


def usual_comments(body: bytes) -> list[UsualComment]:
    """The comments of a body `usual_batch` took (as the stream keeps it)."""
    return _USUAL_BATCH.decode(body).comments


def usual_time(when: str, tz: ZoneInfo) -> datetime:
    at = datetime.fromisoformat(when)
    return at if at.tzinfo else at.replace(tzinfo=tz)


def usual_batch(body: bytes) -> list[UsualComment] | None:
    """The comments of a batch request body when it is a usual batch: decoded and checked in one
    pass, no dict per item (`usual_comments` and `usual_time` read them again). None for any other
    body, which `comment_rows` takes (and names what is wrong); both accept the same items as the
    same values."""
    try:
        comments = _USUAL_BATCH.decode(body).comments
        for when in {c.time for c in comments}:  # a feed's batch shares a few seconds
            datetime.fromisoformat(when)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        return None
    if any(c.message_id.isspace() or c.user_id.isspace() for c in comments):
        return None
    return comments


def checked_comment(item: dict[str, Any], tz: ZoneInfo, at: str) -> tuple[Any, ...]:
    """What `usual_comment` gives, for any item; BadInput names the field that is wrong."""
    platform = _text(item, "platform", at, limit=32)
    if platform not in PLATFORMS:
        raise BadInput(f"platform {platform!r} is not one of {', '.join(sorted(PLATFORMS))}", f"{at}.platform")
    return (platform, _text(item, "room", at, limit=128, required=False, empty=True) or "", _text(item, "message_id", at, limit=128),
            _text(item, "user_id", at, limit=128), _text(item, "name", at, limit=128, required=False, empty=True) or "",
            _text(item, "text", at, limit=2000, empty=True), moment(item.get("time"), tz, f"{at}.time"))


def comment_rows(event_id: str, source: str, body: Any, tz: ZoneInfo) -> list[dict[str, Any]]:
    """The comments of a request as rows, every one checked; BadInput names the first problem.
    Times are aware, in the offset they came with (converting each to UTC was a tenth of a batch
    request): moving them into the store puts them in UTC."""
    rows = []
    now = utc_now()
    items, where = _items(body, "comments", COMMENT_FIELDS)
    for i, item in enumerate(items):
        platform, room, message_id, user_id, name, text, when = usual_comment(item, tz) or checked_comment(item, tz, where(i))
        rows.append({"event_id": event_id, "source": source, "platform": platform, "room": room, "message_id": message_id,
                     "user_id": user_id, "name": name, "text": text, "at": when, "received_at": now})
    return rows


PAYMENT_FIELDS = {"payment_id", "kind", "order_id", "person", "product", "amount_fen", "guide", "time"}


def payment_rows(event_id: str, source: str, body: Any, tz: ZoneInfo, products: set[str], guides: set[str] | None = None) -> list[dict[str, Any]]:
    """The payments of a request as rows, every one checked. `guide` (optional) is the guide the
    shop credits with the sale, one of `guides` (the event's); None leaves it to `attribute`."""
    rows = []
    now = utc_now()
    items, where = _items(body, "payments", PAYMENT_FIELDS)
    for i, item in enumerate(items):
        at = where(i)
        kind = _text(item, "kind", at, limit=16)
        if kind not in KINDS:
            raise BadInput(f"kind {kind!r} is not deposit, refund or order", f"{at}.kind")
        amount = item.get("amount_fen")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise BadInput("'amount_fen' must be a whole number of fen (1 CNY = 100), never a decimal", f"{at}.amount_fen")
        product = _text(item, "product", at, limit=64, required=False)
        if kind == "deposit" and product is None:
            raise BadInput("a deposit names its 'product'", f"{at}.product")
        if product is not None and products and product not in products:
            raise BadInput(f"product {product!r} is not a featured product of this event ({', '.join(sorted(products))})", f"{at}.product")
        guide = _text(item, "guide", at, limit=64, required=False)
        if guide is not None and guides is not None and guide not in guides:
            raise BadInput(f"guide {guide!r} is not a guide of this event ({', '.join(sorted(guides)[:10])}{', ...' if len(guides) > 10 else ''})",
                           f"{at}.guide")
        rows.append({"event_id": event_id, "source": source, "payment_id": _text(item, "payment_id", at, limit=128), "kind": kind,
                     "order_id": _text(item, "order_id", at, limit=128), "person": _text(item, "person", at, limit=128),
                     "product": product, "amount_fen": amount, "guide_id": guide, "at": moment(item.get("time"), tz, f"{at}.time"),
                     "received_at": now})
    return rows


def attribute(engine: Engine, event_id: str, rows: list[dict[str, Any]]) -> None:
    """Credit each payment the shop gave no guide to the guide its person joined the event's group
    through, else the guide the audience file gives the member (in place; left None when neither)."""
    from sqlalchemy import select

    from orchestrator.store import Join, Member

    people = {r["person"] for r in rows if r.get("guide_id") is None}
    if not people:
        return
    join, member = Join.__table__, Member.__table__  # type: ignore[attr-defined]
    found: dict[str, str] = {}
    with engine.connect() as conn:
        for some in (sorted(people)[i:i + 500] for i in range(0, len(people), 500)):
            found |= {p: g for p, g in conn.execute(select(member.c.member_id, member.c.guide).where(
                member.c.event_id == event_id, member.c.member_id.in_(some), member.c.guide.is_not(None)))}
            found |= {p: g for p, g in conn.execute(select(join.c.person, join.c.guide_id).where(
                join.c.event_id == event_id, join.c.person.in_(some), join.c.guide_id.is_not(None)))}  # a join says more than the file
    for r in rows:
        if r.get("guide_id") is None:
            r["guide_id"] = found.get(r["person"])


VISIT_FIELDS = {"visit_id", "kind", "person", "time"}


def visit_rows(event_id: str, source: str, body: Any, tz: ZoneInfo) -> list[dict[str, Any]]:
    """Room entries and exits (`{"visits": [...]}`), every one checked."""
    rows = []
    now = utc_now()
    items, where = _items(body, "visits", VISIT_FIELDS)
    for i, item in enumerate(items):
        at = where(i)
        kind = _text(item, "kind", at, limit=8)
        if kind not in ("enter", "exit"):
            raise BadInput(f"kind {kind!r} is not enter or exit", f"{at}.kind")
        rows.append({"event_id": event_id, "source": source, "visit_id": _text(item, "visit_id", at, limit=128), "kind": kind,
                     "person": _text(item, "person", at, limit=128), "at": moment(item.get("time"), tz, f"{at}.time"), "received_at": now})
    return rows


ID_FIELDS = ("message_id", "payment_id", "visit_id")


def store(engine: Engine, table: Any, rows: list[dict[str, Any]]) -> Stored:
    """Insert rows not seen before (by their unique source id), in one transaction.

    On SQLite the rows go in as one JSON document in one statement: inserted row by row, Python's
    sqlite3 hands the GIL over at each, and the worker moving 2,000 comments a second kept its
    board publisher waiting (bench/board.py)."""
    if not rows:
        return Stored(0, 0)
    columns = list(rows[0])
    if engine.dialect.name == "sqlite" and all(r.keys() == rows[0].keys() for r in rows):  # each value is taken by its column's name
        times = {c for c in columns if isinstance(table.c[c].type, UtcDateTime)}
        doc = orjson.dumps([[sqlite_time(r[c]) if c in times else r[c] for c in columns] for r in rows])
        picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
        statement = text(f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {picks} FROM json_each(:rows) WHERE true ON CONFLICT DO NOTHING")
        with engine.begin() as conn:
            added = conn.execute(statement, {"rows": doc.decode()}).rowcount
        return Stored(added, len(rows) - added)
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    id_field = next(f for f in ID_FIELDS if f in rows[0])
    with engine.begin() as conn:
        added = len(conn.execute(insert(table).on_conflict_do_nothing().returning(table.c[id_field]), rows).all())
    return Stored(added, len(rows) - added)


CSV_COLUMNS = ("time", "user_id", "name", "text")


def csv_batch(path: Path, platform: str) -> dict[str, Any]:
    """A transcribed screen (CSV: time, user_id, name, text[, message_id][, room]) as a comments
    batch; BadInput names the file and line of the first problem."""
    import csv
    import hashlib

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 (save it as 'CSV UTF-8'): {e.reason}", str(path)) from e
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise BadInput(f"{path}: empty", str(path))
    header = [h.strip() for h in rows[0]]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise BadInput(f"{path}:1: missing column(s) {', '.join(missing)}; the columns are {', '.join(CSV_COLUMNS)}[, message_id, room]", f"{path}:1")
    out = []
    for line, cells in enumerate(rows[1:], 2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise BadInput(f"{path}:{line}: {len(cells)} cells, the header has {len(header)}", f"{path}:{line}")
        item = dict(zip(header, (c.strip() for c in cells), strict=True))
        message_id = item.get("message_id") or "csv:" + hashlib.sha1("\x1f".join(cells).encode()).hexdigest()[:20]
        out.append({"platform": platform, "room": item.get("room", ""), "message_id": message_id, "user_id": item["user_id"],
                    "name": item["name"], "text": item["text"], "time": item["time"], "_line": line})
    return {"comments": out}


def csv_rows(path: Path, event_id: str, platform: str, tz: ZoneInfo) -> list[dict[str, Any]]:
    batch = csv_batch(path, platform)
    lines = [c.pop("_line") for c in batch["comments"]]
    try:
        return comment_rows(event_id, "csv", batch, tz)
    except BadInput as e:  # comments[i].field -> file:line
        import re

        found = re.match(r"comments\[(\d+)\]\.?(\w*)", e.at)
        if found:
            raise BadInput(f"{path}:{lines[int(found.group(1))]}: {found.group(2) or 'row'}: {e}", str(path)) from e
        raise
