"""The host board: what the event sees arrives in every viewer's snapshot, from any web process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from sqlalchemy import Engine, select

from orchestrator.settings import Settings
from orchestrator.store import Event
from tests.engine.conftest import running_worker
from tests.engine.test_draws import DRAWS, SECRET, comment, signed
from tests.engine.test_pool import WebProcess, codes_of, pool_event, quiet, schedule
from tests.engine.eventfiles import EventFiles, crowd

pytestmark = pytest.mark.db
EVENT = Event.__table__  # type: ignore[attr-defined]


def board_key(engine: Engine, event_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(EVENT.c.board_key).where(EVENT.c.id == event_id)).scalar_one())


class BoardReader:
    """A board websocket client as the page is one: the whole snapshot first, then patches applied to it."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.state: dict[str, Any] = {}
        self.patches = 0

    async def next(self, timeout: float = 30) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if "patch" in message:
            assert self.state, "a patch came before the whole snapshot"
            self.patches += 1
            self.state = {**self.state, **message["patch"]}
            for key in message.get("gone", []):
                self.state.pop(key, None)
        else:
            self.state = message
        return self.state

    async def until(self, check: Callable[[dict[str, Any]], bool], timeout: float = 30) -> dict[str, Any]:
        """Read until the snapshot passes `check` (the board's own messages are the events awaited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                last = await self.next(max(0.1, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if check(last):
                return last
        raise AssertionError(f"no snapshot passed the check; the last: "
                             f"{json.dumps({k: self.state.get(k) for k in ('funnel', 'gmv_fen')}, ensure_ascii=False)}")


def totals(snap: dict[str, Any]) -> dict[str, int]:
    return {f["step"]: f["count"] for f in snap["funnel"]}


def test_what_happens_reaches_every_viewer_through_any_web_process(
        tmp_path: Path, engine: Engine, redis_url: str, database_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, ORCH_API_TOKEN="tok", REDIS_URL=redis_url)
    path = pool_event(tmp_path / "event", groups=2)
    path.write_text(path.read_text(encoding="utf-8").replace("  screenshot_draw: {winners_per_draw: 1, screen_size: 10, prize: cup}", DRAWS),
                    encoding="utf-8")
    event_id = schedule(engine, settings, redis_url, path)
    key = board_key(engine, event_id)
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_INGEST_SECRET": SECRET,
           "ORCH_API_TOKEN": "tok"}
    servers = [WebProcess(env), WebProcess(env)]
    try:
        for s in servers:
            s.wait()

        async def go() -> tuple[dict[str, Any], dict[str, Any]]:
            async with running_worker(settings, redis_url, engine):  # its publisher pushes the snapshots
                urls = [f"ws://127.0.0.1:{s.port}/board/{event_id}/ws?t={key}" for s in servers]
                async with websockets.connect(urls[0]) as ws_one, websockets.connect(urls[1]) as ws_two:
                    one, two = BoardReader(ws_one), BoardReader(ws_two)
                    first = await one.next()
                    assert first["title"] == "引擎测试直播" and totals(first)["reached"] == 3 and first["commitment"]
                    code = codes_of(engine, event_id)[("g1", "A")]
                    async with aiohttp.ClientSession() as http:
                        for i in range(5):  # five people scan (one of them twice), through either process
                            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as person:
                                for _ in range(2 if i == 0 else 1):
                                    async with person.get(f"{servers[i % 2].url}/s/{code}") as r:
                                        assert r.status == 200
                        for person_id in ("m000001", "m000002", "m000001"):  # a join reported twice counts once
                            async with http.post(f"{servers[1].url}/api/events/{event_id}/joins", json={"person": person_id, "group": 1, "guide": "g1"},
                                                 headers={"Authorization": "Bearer tok"}) as r:
                                assert r.status == 200
                        body, headers = signed({"comments": [comment(n, f"u{n % 3}", "焕新", _t()) for n in range(6)]})
                        async with http.post(f"{servers[0].url}/api/events/{event_id}/comments", data=body, headers=headers) as r:
                            assert r.status == 200
                        async with http.post(f"{servers[0].url}/api/events/{event_id}/comments", data=body, headers=signed({"comments": []})[1]) as r:
                            assert r.status == 401  # replayed with a stale signature: counted nowhere
                        # the deposit credited by the shop to g2; the orders to nobody named, so to g1, whom m000002 joined through
                        pays = [{"payment_id": "p1", "kind": "deposit", "order_id": "o1", "person": "b1", "product": "sofa", "amount_fen": 10000,
                                 "guide": "g2", "time": "2027-06-10 20:00"},
                                {"payment_id": "p2", "kind": "order", "order_id": "o2", "person": "m000002", "amount_fen": 259900,
                                 "time": "2027-06-10 20:05"},
                                {"payment_id": "p3", "kind": "order", "order_id": "o3", "person": "m000002", "amount_fen": 100, "time": "2027-06-10 20:06"}]
                        body, headers = signed({"payments": [{**pays[0], "guide": "g9"}]})
                        async with http.post(f"{servers[1].url}/api/events/{event_id}/payments", data=body, headers=headers) as r:
                            refused = await r.json()
                            assert r.status == 422 and refused["at"] == "payments[0].guide" and "'g9'" in refused["error"], refused  # stores nothing
                        body, headers = signed({"payments": pays})
                        async with http.post(f"{servers[1].url}/api/events/{event_id}/payments", data=body, headers=headers) as r:
                            assert r.status == 200
                        visits = [{"visit_id": "v1", "kind": "enter", "person": "b1", "time": "2027-06-10 19:58"},
                                  {"visit_id": "v2", "kind": "exit", "person": "b1", "time": "2027-06-10 20:30"},
                                  {"visit_id": "v3", "kind": "enter", "person": "b1", "time": "2027-06-10 20:31"}]  # back again: once
                        body, headers = signed({"visits": visits})
                        async with http.post(f"{servers[0].url}/api/events/{event_id}/visits", data=body, headers=headers) as r:
                            assert r.status == 200
                        body, headers = signed({"payments": pays[:1]})  # delivered again
                        async with http.post(f"{servers[0].url}/api/events/{event_id}/payments", data=body, headers=headers) as r:
                            assert (await r.json()) == {"stored": 0, "duplicates": 1}
                        # one seen before beside a new one: only the new refund moves the GMV (its guide's too)
                        refund = {"payment_id": "p4", "kind": "refund", "order_id": "o3", "person": "m000002", "amount_fen": 100,
                                  "time": "2027-06-10 20:07"}
                        body, headers = signed({"payments": [pays[2], refund]})
                        async with http.post(f"{servers[0].url}/api/events/{event_id}/payments", data=body, headers=headers) as r:
                            assert (await r.json()) == {"stored": 1, "duplicates": 1}

                    def done(s: dict[str, Any]) -> bool:
                        t = totals(s)
                        return (t["scanned"], t["joined"], t["entered"], t["commented"], t["deposited"], t["ordered"], s["gmv_fen"]) == (
                            5, 2, 1, 3, 1, 1, 259900)
                    snaps = await one.until(done), await two.until(done)
                    assert one.patches and two.patches, "after the first snapshot, viewers get the parts that changed"
                # counters rebuilt from the store alone equal the live ones
                from redis.asyncio import Redis

                from orchestrator.funnel import Funnel
                from orchestrator.instream import InStream
                from orchestrator.recount import rebuild

                redis = Redis.from_url(redis_url)
                try:
                    await InStream(redis).move_all(engine)  # the scans' log entries too
                    from orchestrator.instream import WAITING

                    assert [int(await redis.get(WAITING + k) or 0) for k in ("comments", "payments", "visits")] == [0, 0, 0], \
                        "every item counted as waiting was moved, and only those (a batch's first sightings)"
                    live = await Funnel(redis).figures(event_id, ["g1", "g2"], ["A", "B"])
                    rebuilding = asyncio.create_task(rebuild(redis, engine, event_id))
                    meanwhile = []
                    while not rebuilding.done():  # what a snapshot taken during the recount would show
                        meanwhile.append(await Funnel(redis).figures(event_id, ["g1", "g2"], ["A", "B"]))
                    await rebuilding
                    again = await Funnel(redis).figures(event_id, ["g1", "g2"], ["A", "B"])
                    assert meanwhile and all(m == live for m in meanwhile), "the recount replaces the figures at once, never half-way"
                finally:
                    await redis.aclose()
                assert again == live and live["totals"]["scanned"] == 5 and sum(live["minutes"]["scanned"].values()) == 5
                return snaps

        a, b = asyncio.run(go())
    finally:
        for s in servers:
            s.stop()
    assert a["funnel"] == b["funnel"] and a["per_guide"] == b["per_guide"], "two web processes serve the same numbers"
    guide = next(g for g in a["per_guide"] if g["id"] == "g1")
    assert (guide["scanned"], guide["joined"], guide["deposited"], guide["ordered"], guide["gmv_fen"]) == (5, 2, 0, 1, 259900)
    other = next(g for g in a["per_guide"] if g["id"] == "g2")
    assert (other["deposited"], other["ordered"], other["gmv_fen"]) == (1, 0, 0)
    assert next(v for v in a["per_variant"] if v["id"] == "A")["scanned"] == 5


def _t() -> Any:
    from datetime import datetime

    from tests.engine.test_draws import CST

    return datetime(2027, 6, 10, 19, 30, tzinfo=CST)


def test_a_board_link_with_a_wrong_token_is_refused(tmp_path: Path, engine: Engine, redis_url: str, database_url: str,
                                                     make_settings: Callable[..., Settings]) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))
    web = WebProcess({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data")})
    try:
        web.wait()

        async def go() -> None:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{web.url}/board/{event_id}?t=wrong") as r:
                    assert r.status == 403
                async with http.get(f"{web.url}/board/{event_id}?t={board_key(engine, event_id)}") as r:
                    assert r.status == 200 and "/static/board.js" in await r.text()
                async with http.get(f"{web.url}/static/board.js") as r:
                    assert r.status == 200
            with pytest.raises(websockets.InvalidStatus) as refused:  # closed before it is accepted: the handshake gets a 403
                async with websockets.connect(f"ws://127.0.0.1:{web.port}/board/{event_id}/ws?t=wrong"):
                    pass
            assert refused.value.response.status_code == 403
        asyncio.run(go())
    finally:
        web.stop()




@pytest.mark.browser
def test_the_board_in_a_real_browser_changes_without_reload_and_shows_the_draw(
        tmp_path: Path, engine: Engine, redis_url: str, database_url: str, make_settings: Callable[..., Settings]) -> None:
    import os
    import shutil

    from orchestrator import scheduling
    from tests.cdp import Chromium
    from tests.engine.conftest import arq_pool

    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, REDIS_URL=redis_url)
    path = pool_event(tmp_path / "event", groups=2)
    path.write_text(path.read_text(encoding="utf-8").replace("  screenshot_draw: {winners_per_draw: 1, screen_size: 10, prize: cup}", DRAWS),
                    encoding="utf-8")
    web = WebProcess({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data"),
                      "ORCH_INGEST_SECRET": SECRET})
    browser = None
    try:
        web.wait()

        async def go() -> str:
            async with arq_pool(redis_url) as pool:  # an event hour in 12 real seconds, from half an hour before the draw
                event_id = (await scheduling.schedule(engine, pool, settings, path, speed=300, rehearsal=True,
                                                      clock_from=_t())).event_id
            async with running_worker(settings, redis_url, engine):
                nonlocal browser
                browser = Chromium(1400, 1000)
                await asyncio.to_thread(browser.open, f"{web.url}/board/{event_id}?t={board_key(engine, event_id)}")
                await asyncio.to_thread(browser.wait_for, "document.getElementById('title').textContent === '引擎测试直播'")
                scanned = "document.querySelector('.bar[data-step=scanned] .num').textContent"
                assert (await asyncio.to_thread(browser.evaluate, scanned)).startswith("0")
                code = codes_of(engine, event_id)[("g1", "A")]
                async with aiohttp.ClientSession() as http:
                    for _ in range(7):
                        async with aiohttp.ClientSession() as person, person.get(f"{web.url}/s/{code}") as r:
                            assert r.status == 200
                    body, headers = signed({"comments": [comment(n, f"u{n}", "焕新 主播好", _t()) for n in range(8)]})
                    async with http.post(f"{web.url}/api/events/{event_id}/comments", data=body, headers=headers) as r:
                        assert r.status == 200
                await asyncio.to_thread(browser.wait_for, f"{scanned}.startsWith('7')")  # no reload: pushed over the websocket
                await asyncio.to_thread(browser.wait_for, "document.querySelector('#draws .winner') !== null", 60)
                await asyncio.to_thread(browser.screenshot, tmp_path / "board.png")
            return event_id

        asyncio.run(go())
    finally:
        if browser is not None:
            browser.close()
        web.stop()
    from tests.browser import png_facts

    width, height, values = png_facts(tmp_path / "board.png")
    assert (width, height) == (1400, 1000) and values > 50
    if os.environ.get("UPDATE_DOCS"):
        shutil.copy(tmp_path / "board.png", Path(__file__).resolve().parents[2] / "docs" / "img" / "board.png")


def test_a_guides_unconfirmed_wecom_tasks_show_in_the_snapshot(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    from sqlalchemy import update
    from redis.asyncio import Redis

    from orchestrator import ledger
    from orchestrator.board import snapshot
    from orchestrator.store import Guide, Send

    send = Send.__table__  # type: ignore[attr-defined]
    event_id = schedule(engine, make_settings(ORCH_ROUTES="sms=console,email=console"), redis_url, pool_event(tmp_path / "event", groups=2))
    ledger.plan_sends(engine, event_id, "reminder:r1", [("guide:g1", "wecom_group", "wecom"), ("m000001", "wecom_customer", "wecom"),
                                                        ("guide:g2", "wecom_group", "wecom"), ("guide:g1", "sms", "console"),
                                                        ("chat:wr1", "wecom_group", "wecom_tasks"), ("chat:wr2", "wecom_group", "wecom_tasks")])
    with engine.begin() as conn:  # the guide has not confirmed these tasks yet (g2's is still only planned)
        conn.execute(update(send).where(send.c.event_id == event_id, send.c.member_id.in_(("guide:g1", "m000001")))
                     .values(state="created", awaiting=True))  # as ledger.finish records a created task
        conn.execute(update(Guide.__table__).where(Guide.__table__.c.guide_id == "g2").values(wecom_userid="wang"))  # type: ignore[attr-defined]
    # posts into two customer groups: the tasks WeCom made, as the worker records them: one for g2's WeCom userid, one for nobody's
    claimed = ledger.claim(engine, event_id, "reminder:r1", "w1", 100)
    chats = {c.member_id: c.id for c in claimed if c.member_id.startswith("chat:")}
    ledger.finish(engine, "w1", [ledger.Result(chats["chat:wr1"], "created", provider_id="msg1", sender="wang"),
                                 ledger.Result(chats["chat:wr2"], "created", provider_id="msg2", sender="someone-else")])

    async def go() -> dict[str, Any]:
        redis = Redis.from_url(redis_url)
        try:
            return await snapshot(redis, engine, event_id, fresh=True)
        finally:
            await redis.aclose()
    guides = {g["id"]: g["unconfirmed"] for g in asyncio.run(go())["per_guide"]}
    assert guides == {"g1": 1, "g2": 1}, ("g1's group task, not its sms row, not g2's planned one, not a member without a guide; "
                                          "g2's post into a customer group it must confirm, not one for an unknown userid")


def test_a_payment_is_credited_to_the_guide_named_else_joined_through_else_in_the_audience_file(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    from sqlalchemy import update

    from orchestrator import ingest
    from orchestrator.store import Join, Member

    settings = make_settings(ORCH_ROUTES="sms=console,email=console", REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, pool_event(tmp_path / "event", groups=1))
    with engine.begin() as conn:
        conn.execute(update(Member.__table__).where(Member.__table__.c.member_id.in_(["m000001", "m000002"]))  # type: ignore[attr-defined]
                     .values(guide="g2"))
        conn.execute(Join.__table__.insert().values(event_id=event_id, person="m000002", guide_id="g1", source="api"))  # type: ignore[attr-defined]
    rows = [{"person": p, "guide_id": g} for p, g in (("m000001", None), ("m000002", None), ("m000003", None), ("stranger", None), ("m000001", "g1"))]
    ingest.attribute(engine, event_id, rows)
    assert [r["guide_id"] for r in rows] == ["g2", "g1", None, None, "g1"], "the file's guide; the join's over the file's; none; none; as named"
