"""Each comment source feeds the same draw: the signed API, Douyin's push, wxlivespy's forward, a
CSV transcription and the Bilibili open-live websocket (a local fake speaking its framing)."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import brotli  # type: ignore[import-untyped]
import pytest
import websockets
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from orchestrator import bilibili, douyin, draws
from orchestrator.cli import cli
from orchestrator.scheduling import get_event, loaded_event
from orchestrator.settings import Settings
from orchestrator.store import Comment
from orchestrator.wxlivespy import path_key
from tests.engine.eventfiles import EventFiles, crowd
from tests.engine.test_draws import CST, DRAWS, SECRET, signed, stream
from tests.engine.test_pool import schedule
from web.app import create_app

pytestmark = pytest.mark.db
DOUYIN_SECRET = "123abc"
EVERYWHERE = "{id: shill1, name: 托儿, role: shill, live_ids: [wechat_channels:u-shill, douyin:u-shill, bilibili:u-shill, other:u-shill]}"


def test_douyins_signature_matches_its_documented_test_vector() -> None:
    headers = {"x-msg-type": "user_group", "x-nonce-str": "123456", "x-roomid": "268", "x-timestamp": "456789"}
    assert douyin.signature(headers, "abc123你好".encode(), "123abc") == "GAkalGmhzqlUGQO/TgvMug=="


def ms(value: str) -> int:
    return int(datetime.fromisoformat(value).timestamp() * 1000)


def via_api(api: TestClient, event_id: str, items: list[dict[str, Any]], _tmp: Path) -> None:
    raw, headers = signed({"comments": items})
    assert api.post(f"/api/events/{event_id}/comments", content=raw, headers=headers).status_code == 200


def via_douyin(api: TestClient, event_id: str, items: list[dict[str, Any]], _tmp: Path) -> None:
    body = json.dumps([{"msg_id": c["message_id"], "sec_openid": c["user_id"], "content": c["text"], "nickname": c["name"],
                        "timestamp": ms(c["time"])} for c in items], ensure_ascii=False).encode()
    headers = {"x-msg-type": "live_comment", "x-nonce-str": "n1", "x-roomid": "268", "x-timestamp": "1"}
    headers["x-signature"] = douyin.signature(headers, body, DOUYIN_SECRET)
    assert api.post(f"/ingest/douyin/{event_id}", content=body, headers=headers).json()["stored"] == len(items)
    assert api.post(f"/ingest/douyin/{event_id}", content=body, headers=headers).json() == {"stored": 0, "duplicates": len(items)}
    forged = {**headers, "x-signature": douyin.signature(headers, body, "wrong")}
    assert api.post(f"/ingest/douyin/{event_id}", content=body, headers=forged).status_code == 401


def via_wxlivespy(api: TestClient, event_id: str, items: list[dict[str, Any]], _tmp: Path) -> None:
    events = [{"decoded_type": "enter", "seq": 0, "nickname": "路人", "sec_openid": "x"}]
    events += [{"decoded_type": "comment", "msg_id": c["message_id"], "msg_time": ms(c["time"]) // 1000, "seq": n, "nickname": c["name"],
                "sec_openid": c["user_id"], "content": c["text"]} for n, c in enumerate(items, 1)]
    body = gzip.compress(json.dumps({"decoded_data": {"events": events, "live_info": {"live_id": "L1"}}}, ensure_ascii=False).encode())
    url = f"/ingest/wxlivespy/{event_id}/{path_key(SECRET, event_id)}"
    assert api.post(url, content=body, headers={"Content-Encoding": "gzip"}).json() == {"stored": len(items), "duplicates": 0}
    assert api.post(url, content=body, headers={"Content-Encoding": "gzip"}).json()["duplicates"] == len(items)  # seq sent again
    assert api.post(f"/ingest/wxlivespy/{event_id}/{'0' * 32}", content=body).status_code == 404
    assert api.post(url, content=b"\x1f\x8bnot gzip").status_code == 422


def via_csv(api: TestClient, event_id: str, items: list[dict[str, Any]], tmp: Path) -> None:
    path = tmp / "screen.csv"
    lines = ["time,user_id,name,text"] + [f"{c['time']},{c['user_id']},{c['name']},{c['text']}" for c in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    settings = api.app.state.settings  # type: ignore[attr-defined]
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "ORCH_DATA_DIR": settings.data_dir}
    result = CliRunner().invoke(cli, ["comments", "import", event_id, str(path), "--platform", "other"], env=env)
    assert result.exit_code == 0 and f"{len(items)} comments stored" in result.output, result.output
    bad = tmp / "bad.csv"
    bad.write_text("time,user_id,name,text\n2027-06-10 19:58,u1,甲,你好\nyesterday,u2,乙,你好\n", encoding="utf-8")
    refused = CliRunner().invoke(cli, ["comments", "import", event_id, str(bad)], env=env)
    assert refused.exit_code != 0 and f"{bad}:3: time" in refused.output + str(refused.exception or "")


def via_bilibili(api: TestClient, event_id: str, items: list[dict[str, Any]], _tmp: Path) -> None:
    engine = api.app.state.engine  # type: ignore[attr-defined]
    asyncio.run(_bilibili(engine, event_id, items))


async def _bilibili(engine: Engine, event_id: str, items: list[dict[str, Any]]) -> None:
    from zoneinfo import ZoneInfo

    from orchestrator import ingest

    def dm(c: dict[str, Any]) -> bytes:
        data = {"cmd": "LIVE_OPEN_PLATFORM_DM", "data": {"open_id": c["user_id"], "uname": c["name"], "msg": c["text"],
                                                         "msg_id": c["message_id"], "timestamp": ms(c["time"]) // 1000, "room_id": 268}}
        return bilibili.packet(bilibili.MESSAGE, json.dumps(data, ensure_ascii=False).encode(), version=0)

    heard: list[bytes] = []

    async def server(ws: Any) -> None:  # the platform: auth first, then compressed batches of packets
        auth = await ws.recv()
        op, body = next(bilibili.packets(auth))
        heard.append(body)
        ok = op == bilibili.AUTH and json.loads(body) == {"key": "ok"}
        await ws.send(bilibili.packet(bilibili.AUTH_REPLY, json.dumps({"code": 0 if ok else 10001}).encode()))
        if not ok:
            return
        half = len(items) // 2
        await ws.send(bilibili.packet(bilibili.MESSAGE, zlib.compress(b"".join(dm(c) for c in items[:half])), version=bilibili.ZLIB_BODY))
        await ws.send(bilibili.packet(bilibili.HEARTBEAT_REPLY, (42).to_bytes(4, "big")))
        await ws.send(bilibili.packet(bilibili.MESSAGE, brotli.compress(b"".join(dm(c) for c in items[half:])), version=bilibili.BROTLI_BODY))
        await ws.send(bilibili.packet(bilibili.MESSAGE, json.dumps({"cmd": "SEND_GIFT", "data": {}}).encode(), version=0))

    event = get_event(engine, event_id)
    stored = 0

    async def store(batch: list[dict[str, Any]]) -> None:
        nonlocal stored
        rows = ingest.comment_rows(event_id, "bilibili", {"comments": batch}, ZoneInfo(event.timezone))
        stored += (await asyncio.to_thread(ingest.store, engine, ingest.COMMENT, rows)).stored

    async with websockets.serve(server, "127.0.0.1", 0) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        with pytest.raises(bilibili.BilibiliError, match="auth refused with code 10001"):
            await bilibili.follow(f"ws://127.0.0.1:{port}", json.dumps({"key": "stale"}), "268", store)
        await bilibili.follow(f"ws://127.0.0.1:{port}", json.dumps({"key": "ok"}), "268", store)
    assert stored == len(items)


async def move_waiting(engine: Engine, redis_url: str) -> int:
    from redis.asyncio import Redis

    from orchestrator.instream import InStream

    redis = Redis.from_url(redis_url)
    try:
        return await InStream(redis).move_all(engine)
    finally:
        await redis.aclose()


@pytest.mark.parametrize("feed", [via_api, via_douyin, via_wxlivespy, via_csv, via_bilibili], ids=lambda f: f.__name__[4:])
def test_each_source_feeds_the_screenshot_draw(feed: Callable[..., None], tmp_path: Path, engine: Engine, redis_url: str,
                                                 make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, ORCH_DOUYIN_SECRET=DOUYIN_SECRET,
                             REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, EventFiles(people=crowd(2), draws=DRAWS, accounts=EVERYWHERE).write(tmp_path / "event"))
    items = [c for c in stream() if c["time"] < "2027-06-10T20"]  # the first hour's stream
    with TestClient(create_app(settings)) as api:
        feed(api, event_id, items, tmp_path)
    asyncio.run(move_waiting(engine, redis_url))  # what a worker's upkeep (or the draw itself) does
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Comment.__table__)).scalar_one() == len(items)  # type: ignore[attr-defined]
    loaded = loaded_event(engine, get_event(engine, event_id), members=False)
    made = draws.screenshot_draw(engine, event_id, "draw:screenshot:1", datetime(2027, 6, 10, 20, tzinfo=CST), loaded)
    assert made.state == "done" and made.entrants == 3 and len(made.winners) == 2 and set(made.winners) <= {"u3", "u4", "u5"}
    assert made.freeze_at is not None and made.freeze_at - datetime(2027, 6, 10, 20, tzinfo=CST) < timedelta(minutes=1)
    again = draws.screenshot_draw(engine, event_id, "draw:screenshot:1", datetime(2027, 6, 10, 20, tzinfo=CST), loaded)
    assert again.winners == made.winners, "a draw is made once"


def test_entries_waiting_from_before_batches_are_moved_after_an_upgrade(tmp_path: Path, engine: Engine, redis_url: str,
                                                                          make_settings: Callable[..., Settings]) -> None:
    """A stream entry was one item, every field, before entries became batches; an upgrade in the
    middle of an event still moves those into the store, beside new ones, and the waiting count
    (/metrics) only counts what it added."""
    import redis as sync_redis

    from orchestrator.instream import WAITING, stream_key

    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))
    old = ["event_id", "api", "m-old", "douyin", "r1", "u-old", "老观众", "来了", "2027-06-10T11:58:00+00:00", "2027-06-10T11:58:01+00:00"]
    client = sync_redis.Redis.from_url(redis_url)
    try:
        old[0] = event_id
        client.xadd(stream_key("comments", event_id), {"d": json.dumps(old, ensure_ascii=False)})
        with TestClient(create_app(settings)) as api:
            raw, headers = signed({"comments": [{"platform": "douyin", "room": "r1", "message_id": f"m{i}", "user_id": f"u{i}", "name": "观众",
                                                 "text": "焕新", "time": "2027-06-10T19:59:00+08:00"} for i in range(3)]})
            assert api.post(f"/api/events/{event_id}/comments", content=raw, headers=headers).json() == {"stored": 3, "duplicates": 0}
        assert int(client.get(WAITING + "comments") or 0) == 3
        assert asyncio.run(move_waiting(engine, redis_url)) == 4
        assert int(client.get(WAITING + "comments") or 0) == 0
        assert client.xlen(stream_key("comments", event_id)) == 0
    finally:
        client.close()
    with engine.connect() as conn:
        rows = {r.message_id: r for r in conn.execute(select(Comment.__table__)).all()}  # type: ignore[attr-defined]
    assert sorted(rows) == ["m-old", "m0", "m1", "m2"]
    assert (rows["m-old"].user_id, rows["m-old"].name, rows["m-old"].source, rows["m-old"].platform) == ("u-old", "老观众", "api", "douyin")
    assert rows["m1"].at.replace(tzinfo=None) == datetime(2027, 6, 10, 11, 59) and rows["m1"].source == "api"


def test_the_store_keeps_each_comment_as_it_came_once(tmp_path: Path, engine: Engine, redis_url: str,
                                                      make_settings: Callable[..., Settings]) -> None:
    """What a mover stores: every field as it came (quotes, emoji, an empty name), times as the
    same instants, a message id seen before (in this batch or an earlier one) not again."""
    from orchestrator import ingest

    settings = make_settings(ORCH_ROUTES="sms=console,email=console", REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))
    texts = ['说"好"\\n', "🎉焕新", "'; DROP TABLE comment; --"]
    body = {"comments": [{"platform": "douyin", "room": "r1", "message_id": f"m{i % 3}", "user_id": f"u{i}", "name": "" if i == 1 else "观众",
                          "text": texts[i % 3], "time": f"2027-06-10T19:5{i}:00.25+08:00"} for i in range(4)]}  # m0 twice
    rows = ingest.comment_rows(event_id, "api", body, CST)
    assert ingest.store(engine, ingest.COMMENT, rows) == ingest.Stored(3, 1)
    assert ingest.store(engine, ingest.COMMENT, rows[1:2]) == ingest.Stored(0, 1)
    with engine.connect() as conn:
        got = {r.message_id: r for r in conn.execute(select(Comment.__table__)).all()}  # type: ignore[attr-defined]
    assert sorted(got) == ["m0", "m1", "m2"]
    for i in range(3):
        r = got[f"m{i}"]
        assert (r.event_id, r.source, r.platform, r.room, r.user_id, r.name, r.text) == (
            event_id, "api", "douyin", "r1", f"u{i}", "" if i == 1 else "观众", texts[i])
        assert r.at.replace(tzinfo=None) == datetime(2027, 6, 10, 11, 50 + i, 0, 250000), "the same instant, in UTC"
        assert r.received_at.replace(tzinfo=None) == rows[0]["received_at"].replace(tzinfo=None)


def test_usual_and_unusual_batches_through_the_endpoint_store_the_same_rows(tmp_path: Path, engine: Engine, redis_url: str,
                                                                              make_settings: Callable[..., Settings]) -> None:
    """A usual batch goes into the stream as its body and an unusual one as checked rows: after
    moving, both give the rows the full check gives; times without an offset are the event's; a
    batch partly seen before stores and counts only its new items (as commenters too)."""
    from redis import Redis

    from orchestrator import ingest
    from orchestrator.funnel import key as funnel_key

    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))
    zone = get_event(engine, event_id).timezone

    def item(n: int, **more: Any) -> dict[str, Any]:
        return {"platform": "douyin", "room": "r1", "message_id": f"m{n}", "user_id": f"u{n}", "name": "观众", "text": f"说{n}",
                "time": f"2027-06-10T19:30:0{n}", **more}

    usual = {"comments": [item(1), item(2, time="2027-06-10T11:30:02Z", name=""), item(3, room="", text='"; --')]}
    overlapping = {"comments": [item(3), item(4), item(2), item(5, time="2027-06-10T19:30:05+09:00")]}  # m2, m3 seen before
    unusual = {"comments": [item(6, message_id=7), item(8, time=1812345678000), item(4)]}  # an id as a number, epoch ms; m4 seen
    assert ingest.usual_batch(signed(usual)[0]) and ingest.usual_batch(signed(overlapping)[0]) and not ingest.usual_batch(signed(unusual)[0])
    with TestClient(create_app(settings)) as api:
        answers = [api.post(f"/api/events/{event_id}/comments", content=raw, headers=headers).json()
                   for raw, headers in map(signed, (usual, overlapping, unusual))]
    assert answers == [{"stored": 3, "duplicates": 0}, {"stored": 2, "duplicates": 2}, {"stored": 2, "duplicates": 1}]
    assert asyncio.run(move_waiting(engine, redis_url)) == 7
    expected = {r["message_id"]: r for body in (usual, {"comments": overlapping["comments"][1::2]}, {"comments": unusual["comments"][:2]})
                for r in ingest.comment_rows(event_id, "api", body, ZoneInfo(zone))}
    with engine.connect() as conn:
        got = {r.message_id: r for r in conn.execute(select(Comment.__table__)).all()}  # type: ignore[attr-defined]
    assert sorted(got) == sorted(expected) == ["7", "m1", "m2", "m3", "m4", "m5", "m8"]
    for message_id, want in expected.items():
        row = got[message_id]
        assert (row.platform, row.room, row.user_id, row.name, row.text, row.source) == (
            want["platform"], want["room"], want["user_id"], want["name"], want["text"], "api"), message_id
        assert row.at.replace(tzinfo=None) == want["at"].astimezone(timezone.utc).replace(tzinfo=None), message_id
    assert got["m1"].at.replace(tzinfo=None) == datetime(2027, 6, 10, 19, 30, 1, tzinfo=ZoneInfo(zone)).astimezone(timezone.utc).replace(tzinfo=None)
    redis = Redis.from_url(redis_url)
    try:
        commented = {m.decode() for m in redis.smembers(funnel_key(event_id, "commented"))}
    finally:
        redis.close()
    assert commented == {"u1", "u2", "u3", "u4", "u5", "u6", "u8"}


def test_an_item_sent_again_is_counted_once_while_the_event_remembers_its_ids_and_stored_once_after(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    """An event's ids from a source are remembered until three days after its last item from there:
    an item sent again days later, through either append path, is a duplicate; the same id from
    another source is another item. Once the ids are forgotten the answer counts it again, and the
    store's unique key still keeps it once; the waiting count stays exact either way."""
    from redis.asyncio import Redis

    from orchestrator import ingest
    from orchestrator.instream import SEEN_SECONDS, WAITING, InStream, seen_key

    settings = make_settings(ORCH_ROUTES="sms=console,email=console", REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))
    day0 = datetime(2027, 6, 10, 12, tzinfo=timezone.utc)
    items = [{"platform": "douyin", "room": "r", "message_id": f"m-days-{i}", "user_id": "u1", "name": "", "text": "好",
              "time": "2027-06-10T12:00:00Z"} for i in range(2)]
    body = json.dumps({"comments": items}).encode()

    async def append(stream: InStream, source: str, at: datetime, usual: bool) -> int:
        if usual:
            comments = ingest.usual_batch(body)
            assert comments is not None
            return (await stream.append_usual(event_id, source, at, body, comments, "Asia/Shanghai")).stored
        rows = ingest.comment_rows(event_id, source, {"comments": items}, ZoneInfo("Asia/Shanghai"))
        return (await stream.append("comments", event_id, [{**r, "received_at": at} for r in rows])).stored

    async def go() -> None:
        redis = Redis.from_url(redis_url)
        try:
            stream = InStream(redis)
            waiting0 = int(await redis.get(WAITING + "comments") or 0)
            stored = [await append(stream, "feed-days", day0 + timedelta(days=d), usual) for d, usual in ((0, False), (1, True), (2, False), (5, True))]
            assert stored == [2, 0, 0, 0]
            assert SEEN_SECONDS - 60 < await redis.ttl(seen_key("comments", event_id, "feed-days")) <= SEEN_SECONDS
            assert await append(stream, "other-feed", day0, True) == 2, "ids are per source"
            await redis.delete(seen_key("comments", event_id, "feed-days"))  # forgotten: three days after the event's last item
            assert await append(stream, "feed-days", day0, True) == 2
            assert await redis.delete(seen_key("comments", event_id, "other-feed")) == 1
            assert await append(stream, "other-feed", day0, False) == 2
            assert int(await redis.get(WAITING + "comments")) - waiting0 == 8
            assert await InStream(redis).move(engine, "comments", event_id) == 8
            assert int(await redis.get(WAITING + "comments")) == waiting0
        finally:
            await redis.aclose()

    asyncio.run(go())
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Comment.__table__)).scalar_one() == 4, "each (source, id) once"  # type: ignore[attr-defined]
