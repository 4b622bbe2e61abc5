"""The fast checks of usual comments (one item; a whole batch decoded in one pass) agree with the
field-by-field one on any input (hypothesis)."""

from __future__ import annotations

import json
import typing
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import event, given, settings
import orjson
from hypothesis import strategies as st

from orchestrator import ingest

TZ = ZoneInfo("Asia/Shanghai")
TEXT = st.one_of(st.text(max_size=6), st.text(alphabet=" \t\n　", max_size=3), st.text(min_size=120, max_size=140),
                 st.sampled_from(["", " ", "m1", "张三", "wechat_channels", "douyin", "Douyin"]))
VALUE = st.one_of(TEXT, st.none(), st.integers(), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2))
TIME = st.one_of(VALUE, st.sampled_from(["2027-06-10T19:30:00+08:00", "2027-06-10T11:30:00Z", " 2027-06-10T19:30:00+08:00 ",
                                         "2027-06-10 19:30", "2027-06-10T19:30:00.123456", "20270610T193000", "2027-06-10T25:00",
                                         "yesterday"]),
                 st.datetimes().map(lambda d: d.isoformat()), st.integers(min_value=10**12, max_value=10**14))
ITEM = st.fixed_dictionaries({}, optional={"platform": st.one_of(VALUE, st.sampled_from(sorted(ingest.PLATFORMS))), "room": VALUE,
                                           "message_id": VALUE, "user_id": VALUE, "name": VALUE, "text": VALUE, "time": TIME})


@settings(max_examples=2000, deadline=None)
@given(ITEM)
def test_the_fast_check_accepts_only_what_the_full_check_accepts_and_gives_the_same_row(item: dict[str, Any]) -> None:
    fast = ingest.usual_comment(item, TZ)
    try:
        full: tuple[Any, ...] | None = ingest.checked_comment(item, TZ, "body")
    except ingest.BadInput:
        full = None
    if fast is not None:
        assert full == fast, (item, fast, full)


def test_a_batch_of_usual_comments_takes_the_fast_check() -> None:
    item = {"platform": "douyin", "room": "r", "message_id": "m1", "user_id": "u1", "name": "张三", "text": "焕新", "time": "2027-06-10T19:30:00+08:00"}
    assert ingest.usual_comment(item, TZ) is not None
    assert ingest.usual_comment({**item, "message_id": 7}, TZ) is None, "an id sent as a number is turned into text by the full check"
    rows = ingest.comment_rows("e1", "api", {"comments": [item, {**item, "message_id": 7}]}, TZ)
    assert [r["message_id"] for r in rows] == ["m1", "7"] and rows[0]["at"] == datetime(2027, 6, 10, 11, 30, tzinfo=timezone.utc)


ID = st.one_of(st.text(min_size=1, max_size=8), TEXT)
USUAL = st.fixed_dictionaries({"platform": st.sampled_from(sorted(ingest.PLATFORMS)), "message_id": ID, "user_id": ID, "text": TEXT,
                               "time": st.one_of(st.datetimes().map(lambda d: d.isoformat()), st.datetimes(timezones=st.timezones()).map(
                                   lambda d: d.isoformat()), TIME)}, optional={"room": TEXT, "name": TEXT})
BODY = st.one_of(st.fixed_dictionaries({"comments": st.lists(USUAL, min_size=1, max_size=3)}),
                 st.fixed_dictionaries({"comments": st.lists(st.one_of(USUAL, ITEM), min_size=0, max_size=3)}),
                 st.fixed_dictionaries({"comments": st.lists(ITEM, min_size=1, max_size=2), "other": VALUE}), ITEM)


@settings(max_examples=2000, deadline=None)
@given(BODY, st.booleans())
def test_a_batch_decoded_in_one_pass_gives_the_rows_the_full_check_gives(body: dict[str, Any], ascii_only: bool) -> None:
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    comments = ingest.usual_batch(raw)
    event("usual" if comments is not None else "other")
    if comments is None:
        return
    assert ingest.usual_comments(raw) == comments
    times = {c.time: ingest.usual_time(c.time, TZ) for c in comments}
    rows = ingest.comment_rows("e1", "api", orjson.loads(raw), TZ)  # raises if the full check refuses what the fast one took
    assert [(r["message_id"], r["platform"], r["room"], r["user_id"], r["name"], r["text"], r["at"]) for r in rows] == \
        [(c.message_id, c.platform, c.room, c.user_id, c.name, c.text, times[c.time]) for c in comments]
    assert all(r["at"].utcoffset() == times[c.time].utcoffset() for r, c in zip(rows, comments, strict=True))


def test_what_a_usual_batch_is() -> None:
    item = {"platform": "douyin", "room": "r", "message_id": "m1", "user_id": "u1", "name": "张三", "text": "焕新", "time": "2027-06-10T19:30:00"}
    comments = ingest.usual_batch(json.dumps({"comments": [item, {**item, "message_id": "m2", "room": "😀" * 128}]}).encode())
    assert comments is not None and [c.message_id for c in comments] == ["m1", "m2"]
    assert ingest.usual_time(comments[0].time, TZ) == datetime(2027, 6, 10, 19, 30, tzinfo=TZ)
    assert ingest.usual_batch(json.dumps(item).encode()) is None, "one item alone: the full check"
    for odd in ({"message_id": 7}, {"message_id": " "}, {"room": None}, {"time": 1812345678000}, {"time": "2027-06-10T19:30:00z"},
                {"platform": "Douyin"}, {"room": "x" * 129}, {"extra": 1}):
        assert ingest.usual_batch(json.dumps({"comments": [item, {**item, **odd}]}).encode()) is None, odd
    assert ingest.usual_batch(json.dumps({"comments": [item] * 1001}).encode()) is None
    assert ingest.usual_batch(b'{"comments": []}') is None and ingest.usual_batch(b"not json") is None
    assert set(ingest.UsualComment.__struct_fields__) == ingest.COMMENT_FIELDS
    assert set(typing.get_args(typing.get_type_hints(ingest.UsualComment)["platform"])) == ingest.PLATFORMS
