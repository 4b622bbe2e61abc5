"""The fast check of a usual comment agrees with the field-by-field one on any item (hypothesis)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
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
