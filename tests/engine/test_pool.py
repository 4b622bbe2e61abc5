"""The path from a poster scan to a group: scan codes, the pool (活码) and the join page.

Real store, real Redis; the concurrency test runs two uvicorn processes of the web app and 200
clients at once over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from orchestrator import scheduling
from orchestrator.cli import cli
from orchestrator.errors import OrchestratorError, UnknownEvent
from orchestrator.pool import Pool, add_group, groups_of
from orchestrator.scans import scan_counts
from orchestrator.webserver import command
from orchestrator.settings import Settings
from orchestrator.store import ScanCode
from tests.engine.conftest import arq_pool
from tests.engine.eventfiles import EventFiles, crowd
from web.app import create_app

pytestmark = pytest.mark.db
SCANCODE = ScanCode.__table__  # type: ignore[attr-defined]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32  # what the pool checks: the picture's signature
GUIDES = "id,name,channel_code,contact_code\ng1,小李,G01,wx_xiaoli\ng2,小王,G02,wx_xiaowang\n"
CST = timezone(timedelta(hours=8))


def pool_event(folder: Path, groups: int = 5, capacity: int = 50, margin: int = 45, expires: str = "2027-06-15 00:00",
               join_extra: str = "", guides: str = GUIDES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    codes = []
    for n in range(1, groups + 1):
        (folder / f"g{n}.png").write_bytes(PNG + bytes([n]))
        codes.append(f"{{name: 测试群{n}, image: g{n}.png, expires: {expires}}}")
    join = (f'join: {{kind: wechat_group_codes, capacity: {capacity}, margin: {margin}, group_name: "测试群{{n}}", '
            f'{join_extra}codes: [{", ".join(codes)}]}}')
    files = EventFiles(people=crowd(3), guides=guides, variants="[{id: A, hook: 进群抽奖}, {id: B, hook: 满减}]", join=join)
    return files.write(folder)


def schedule(engine: Engine, settings: Settings, redis_url: str, path: Path) -> str:
    async def go() -> str:
        async with arq_pool(redis_url) as pool:
            return (await scheduling.schedule(engine, pool, settings, path)).event_id
    return asyncio.run(go())


def quiet(make_settings: Callable[..., Settings]) -> Settings:
    """Settings whose reminders go to the console: these tests are about the path, not the channels."""
    return make_settings(ORCH_ROUTES="sms=console,email=console")


def codes_of(engine: Engine, event_id: str) -> dict[tuple[str, str], str]:
    with engine.connect() as conn:
        rows = conn.execute(select(SCANCODE.c.guide_id, SCANCODE.c.variant, SCANCODE.c.code).where(SCANCODE.c.event_id == event_id))
        return {(g, v): c for g, v, c in rows}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebProcess:
    """`uvicorn web.app:app_from_env` in its own process, as `orchestrator web` runs it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(command(self.port), env={**os.environ, **env})

    def wait(self, timeout: float = 30.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"web process exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)  # not listening yet: nothing to await but the port
        raise RuntimeError("web process did not answer /healthz")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def web_env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def client(make_settings: Callable[..., Settings], redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as c:
        yield c


def group_shown(html: str) -> int:
    found = re.search(r'src="/g/[^/]+/(\d+)"', html)
    return int(found.group(1)) if found else 0


def test_concurrent_scans_across_two_web_processes_fill_groups_in_order_never_past_the_margin(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings], web_env: dict[str, str]) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event"))
    codes = list(codes_of(engine, event_id).values())
    assert len(codes) == 4, "one code per guide x variant"
    servers = [WebProcess({**web_env, "ORCH_API_TOKEN": "tok"}), WebProcess({**web_env, "ORCH_API_TOKEN": "tok"})]
    try:
        for s in servers:
            s.wait()

        async def scan_all(n: int) -> list[tuple[int, int, str]]:
            async def one(i: int) -> tuple[int, int, str]:
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # a person: their own cookie (unsafe: an IP host)
                    async with session.get(f"{servers[i % 2].url}/s/{codes[i % 4]}") as resp:
                        html = await resp.text()
                        again = await (await session.get(f"{servers[(i + 1) % 2].url}/s/{codes[i % 4]}")).text()
                    # then they join the group shown, and the platform reports it (to either process, twice)
                    join = {"person": f"p{i:03d}", "group": group_shown(html)}
                    for server in (servers[(i + 1) % 2], servers[i % 2]):
                        async with session.post(f"{server.url}/api/events/{event_id}/joins", json=join,
                                                headers={"Authorization": "Bearer tok"}) as answer:
                            assert answer.status == 200, await answer.text()
                    return resp.status, group_shown(html), again

            return await asyncio.gather(*(one(i) for i in range(n)))

        results = asyncio.run(scan_all(200))
    finally:
        for s in servers:
            s.stop()
    assert {status for status, _g, _a in results} == {200}
    shown = Counter(g for _s, g, _a in results)
    assert shown == {1: 45, 2: 45, 3: 45, 4: 45, 5: 20}, "strictly in order, never beyond the margin"
    assert all(group_shown(again) == g for _s, g, again in results), "a second scan sends a person to the same group"

    async def redis_side() -> tuple[dict[int, int], dict[str, int]]:
        redis = Redis.from_url(redis_url)
        try:
            return await Pool(redis, engine).counts(event_id), await scan_counts(redis, event_id)
        finally:
            await redis.aclose()

    taken, scans = asyncio.run(redis_side())
    assert taken == {1: 45, 2: 45, 3: 45, 4: 45, 5: 20}, "totals match exactly"
    assert scans["total"] == 400 and scans["g:g1"] + scans["g:g2"] == 400 and scans["v:A"] + scans["v:B"] == 400
    assert scans["people"] == 200, "unique people by cookie, exactly"
    from orchestrator.joins import joined

    joins = joined(engine, event_id)
    assert len(joins) == 200 and Counter(joins.values()) == taken, "each person's join counted once, in the group they were sent to"


def test_a_full_pool_shows_the_guides_contact_and_a_group_added_later_takes_the_next_scans(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings], client: TestClient) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event", groups=1, capacity=3, margin=2))
    code = codes_of(engine, event_id)[("g2", "B")]
    pages = []
    for _ in range(3):
        client.cookies.clear()
        pages.append(client.get(f"/s/{code}").text)
    assert [group_shown(p) for p in pages] == [1, 1, 0]
    assert "所有群都已满员" in pages[2] and "wx_xiaowang" in pages[2] and "小王" in pages[2]
    image = client.get(f"/g/{event_id}/1")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content.startswith(PNG)

    (tmp_path / "new.png").write_bytes(PNG)
    result = CliRunner().invoke(cli, ["groups", "add", event_id, "--qr", str(tmp_path / "new.png"), "--expires", "2027-06-16T00:00"],
                                env={**make_settings_env(make_settings()), "REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    assert "group 2 added" in result.output
    client.cookies.clear()
    assert group_shown(client.get(f"/s/{code}").text) == 2
    listed = CliRunner().invoke(cli, ["groups", "list", event_id], env={**make_settings_env(make_settings()), "REDIS_URL": redis_url})
    assert "1. 测试群1: 2/2 places taken (holds 3)" in listed.output and "2. 测试群2: 1/2 places taken" in listed.output


def make_settings_env(settings: Settings) -> dict[str, str]:
    return {"DATABASE_URL": settings.database_url, "ORCH_DATA_DIR": settings.data_dir}


def test_expired_codes_are_passed_over(tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event", groups=2))
    add_group(engine, event_id, "过期群", PNG, capacity=50, margin=45, expires_at=datetime(2027, 6, 1, tzinfo=CST))

    async def places() -> list[int]:
        redis = Redis.from_url(redis_url)
        try:
            pool = Pool(redis, engine)
            before = (await pool.assign(event_id, "a" * 32, datetime(2027, 6, 14, 23, tzinfo=CST))).group
            after = (await pool.assign(event_id, "b" * 32, datetime(2027, 6, 15, 1, tzinfo=CST))).group
            return [before, after]
        finally:
            await redis.aclose()

    assert asyncio.run(places()) == [1, 0], "every code expired on 2027-06-15 00:00 (group 3 expired even earlier)"


def test_unknown_codes_and_cancelled_events_get_a_clear_page(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings], client: TestClient) -> None:
    unknown = client.get("/s/nosuchcode")
    assert unknown.status_code == 404 and "二维码无效" in unknown.text and "nosuchcode" in unknown.text
    assert client.get("/g/no-event/1").status_code == 404
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event"))
    code = codes_of(engine, event_id)[("g1", "A")]

    async def cancel() -> None:
        async with arq_pool(redis_url) as pool:
            await scheduling.cancel(engine, pool, event_id)

    asyncio.run(cancel())
    gone = client.get(f"/s/{code}")
    assert gone.status_code == 410 and "已取消" in gone.text


def test_a_group_code_that_is_not_a_picture_is_refused_and_nothing_is_stored(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    path = pool_event(tmp_path / "event", groups=2)
    (path.parent / "g2.png").write_text("not a picture", encoding="utf-8")
    with pytest.raises(OrchestratorError, match=r"g2.png is not a PNG or JPEG image"):
        schedule(engine, quiet(make_settings), redis_url, path)
    with pytest.raises(UnknownEvent):
        scheduling.get_event(engine, "engine-test")

    (path.parent / "g2.png").write_bytes(PNG)
    event_id = schedule(engine, quiet(make_settings), redis_url, path)
    (tmp_path / "text.png").write_text("hello", encoding="utf-8")
    env = {**make_settings_env(make_settings()), "REDIS_URL": redis_url}
    result = CliRunner().invoke(cli, ["groups", "add", event_id, "--qr", str(tmp_path / "text.png"), "--expires", "2027-06-16T00:00"], env=env)
    assert result.exit_code != 0 and "is not a PNG or JPEG image" in _output(result)
    assert [g.number for g in groups_of(engine, event_id)] == [1, 2], "nothing stored"
    bad_margin = CliRunner().invoke(cli, ["groups", "add", event_id, "--qr", str(path.parent / "g1.png"),
                                          "--expires", "2027-06-16T00:00", "--capacity", "10", "--margin", "12"], env=env)
    assert bad_margin.exit_code != 0 and "margin 12 is above the capacity 10" in _output(bad_margin)
    assert [g.number for g in groups_of(engine, event_id)] == [1, 2]


def _output(result: Any) -> str:
    return str(result.output) + str(result.exception or "")


@pytest.mark.browser
def test_the_join_page_in_a_real_browser(tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings],
                                         web_env: dict[str, str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/browser.py
    from browser import dump_dom, png_facts, require_chromium, screenshot

    require_chromium()
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event"))
    code = codes_of(engine, event_id)[("g1", "A")]
    server = WebProcess(web_env)
    try:
        server.wait()
        dom = dump_dom(f"{server.url}/s/{code}")
        png = screenshot(f"{server.url}/s/{code}", tmp_path / "join.png", width=390, height=700)
    finally:
        server.stop()
    assert "引擎测试直播" in dom and "直播时间：6月10日（周四）19:00" in dom
    assert f'src="/g/{event_id}/1"' in dom and "长按识别二维码" in dom
    width, height, values = png_facts(png)
    assert (width, height) == (390, 700) and values > 20


def test_a_scan_after_redis_forgot_its_scripts_is_placed_and_counted_once(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    from orchestrator.scans import resolve, scan_tally

    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event"))
    scanned = resolve(engine, codes_of(engine, event_id)[("g1", "A")])
    assert scanned is not None

    async def go() -> tuple[list[int], dict[str, int]]:
        redis = Redis.from_url(redis_url)
        try:
            pool = Pool(redis, engine)
            groups = []
            for visitor in ("a" * 32, "b" * 32):
                await redis.script_flush()  # a restarted Redis knows no scripts
                place = await pool.assign(event_id, visitor, tally=scan_tally(scanned, visitor))
                groups.append(place.count)
            return groups, await scan_counts(redis, event_id)
        finally:
            await redis.aclose()

    counts, scans = asyncio.run(go())
    assert counts == [1, 2] and scans["total"] == 2 and scans["g:g1"] == 2


def test_joins_reported_through_the_api_count_each_person_once(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    from orchestrator.joins import joined

    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event", groups=2))
    auth = {"Authorization": "Bearer s3cret-token"}
    with TestClient(create_app(make_settings(REDIS_URL=redis_url, ORCH_API_TOKEN="s3cret-token"))) as api:
        url = f"/api/events/{event_id}/joins"
        first = api.post(url, json={"joins": [{"person": "m000001", "group": 1, "guide": "g1"}, {"person": "m000002", "group": 2},
                                              {"person": "m000001", "group": 1}]}, headers=auth)
        assert first.status_code == 200 and first.json() == {"recorded": 2, "already": 1}
        again = api.post(url, json={"person": "m000002", "group": 2}, headers=auth)
        assert again.json() == {"recorded": 0, "already": 1}, "a retried report changes nothing"
        assert joined(engine, event_id) == {"m000001": 1, "m000002": 2}

        bad = [
            ({"joins": [{"person": "m000003", "group": 1}, {"person": "m000004", "group": 9}]}, 422, "group 9 is not in the event's pool (groups: 1, 2)", "joins[1].group"),
            ({"joins": [{"person": ""}]}, 422, "'person' must be a non-empty string", "joins[0].person"),
            ({"person": "m000005", "grup": 1}, 422, "unknown field 'grup'", "body"),
            ({"joins": []}, 422, "at least one", None),
        ]
        for body, status, message, at in bad:
            response = api.post(url, json=body, headers=auth)
            assert response.status_code == status and message in response.json()["error"], body
            assert response.json().get("at") == at
        assert api.post(url, content=b"{not json", headers=auth).status_code == 400
        assert api.post(url, json={"person": "m000006"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert api.post(url, json={"person": "m000006"}).status_code == 401
        assert api.post("/api/events/no-such-event/joins", json={"person": "m000006"}, headers=auth).status_code == 404
        assert joined(engine, event_id) == {"m000001": 1, "m000002": 2}, "bad requests store nothing"
    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as off:
        response = off.post(f"/api/events/{event_id}/joins", json={"person": "m000006"}, headers=auth)
        assert response.status_code == 503 and "ORCH_API_TOKEN" in response.json()["error"]


def test_the_join_open_step_opens_the_pool(tmp_path: Path, engine: Engine, redis_url: str, receiver: Any,
                                          make_settings: Callable[..., Settings]) -> None:
    from tests.engine.test_event_run import run_event, step_states

    settings = make_settings(receiver)
    event_id = asyncio.run(run_event(engine, settings, redis_url, pool_event(tmp_path / "event", groups=2)))
    assert step_states(engine, event_id)["join:open"].note == "group pool open: 2 groups, 90 places before it runs out"

    async def counts() -> dict[int, int]:
        redis = Redis.from_url(redis_url)
        try:
            return await Pool(redis, engine).counts(event_id)
        finally:
            await redis.aclose()

    assert asyncio.run(counts()) == {1: 0, 2: 0}, "in Redis before anyone scans"


def test_a_pool_running_low_or_a_code_about_to_expire_alerts_the_staff_once(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    import json

    from sqlalchemy import update

    from orchestrator import eventlog, poolwatch
    from orchestrator.runtime import Runtime
    from orchestrator.scheduling import EVENT
    from orchestrator.store import utc_now

    path = pool_event(tmp_path / "event", groups=2)  # 2 x 45 places
    path.write_text(path.read_text(encoding="utf-8").replace("policy:\n", "support:\n  alerts: {pool_low: '{{ event.title }}：只剩{{ pool.remaining }}个名额（{{ pool.group }}）', pool_low_below: 200}\npolicy:\n"),
                    encoding="utf-8")
    settings = quiet(make_settings)
    event_id = schedule(engine, settings, redis_url, path)
    add_group(engine, event_id, "快过期群", PNG, capacity=50, margin=45, expires_at=utc_now() + timedelta(hours=3))
    with engine.begin() as conn:
        conn.execute(update(EVENT).where(EVENT.c.id == event_id).values(state="running"))

    async def watch() -> None:
        async with arq_pool(redis_url) as pool:
            rt = Runtime(settings, engine, pool)
            await poolwatch.check(rt)  # the pool is not in Redis yet: nothing to say
            await Pool(pool, engine).refresh(event_id)
            await poolwatch.check(rt)
            await poolwatch.check(rt)  # said once, not again
            await rt.close()

    asyncio.run(watch())
    log = [e for e in eventlog.entries(engine, event_id) if e["kind"].startswith("pool-")]
    assert [(e["kind"], e["data"]) for e in log] == [("pool-low", {"places_left": 135}), ("pool-expiring", {"group": 3})]
    assert log[0]["message"] == "引擎测试直播：只剩135个名额（测试群1）"
    lines = [json.loads(line) for line in (Path(settings.data_dir) / "console" / f"{event_id}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["channel"] for line in lines] == ["staff_alert", "staff_alert"] and lines[0]["text"] == log[0]["message"]

    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as web:  # and the metrics say so
        text = web.get("/metrics").text
    assert f'orchestrator_pool_places_left{{event="{event_id}"}} 135.0' in text
    assert f'orchestrator_pool_codes_expiring{{event="{event_id}"}} 1.0' in text
    assert f'orchestrator_pool_alerts{{event="{event_id}",kind="pool-low"}} 1.0' in text
    assert f'orchestrator_pool_alerts{{event="{event_id}",kind="pool-expiring"}} 1.0' in text


def test_each_person_who_joins_is_welcomed_once_through_the_ledger(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Any, make_settings: Callable[..., Settings]) -> None:
    from orchestrator.store import Send
    from tests.engine.conftest import running_worker, until

    send = Send.__table__  # type: ignore[attr-defined]
    welcome = 'welcome: "欢迎{{ member.name }}加入{{ group.name }}！{% if guide %}导购{{ guide.name }}{% endif %}", welcome_channels: [webhook], '
    settings = make_settings(receiver, ORCH_ROUTES="sms=webhook,email=webhook,webhook=webhook", ORCH_API_TOKEN="tok", REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, pool_event(tmp_path / "event", groups=2, join_extra=welcome))
    auth = {"Authorization": "Bearer tok"}
    with TestClient(create_app(settings)) as api:
        url = f"/api/events/{event_id}/joins"
        assert api.post(url, json={"joins": [{"person": "m000001", "group": 2, "guide": "g1"}, {"person": "stranger", "group": 1}]},
                        headers=auth).json() == {"recorded": 2, "already": 0}
        assert api.post(url, json={"person": "m000001", "group": 2}, headers=auth).json() == {"recorded": 0, "already": 1}

    def welcomes() -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(select(send).where(send.c.event_id == event_id, send.c.step_id == "welcome")).all())

    rows = welcomes()
    assert [(r.member_id, r.channel, r.state) for r in rows] == [("m000001", "webhook", "planned"), ("stranger", "webhook", "planned")]

    async def work() -> None:
        async with running_worker(settings, redis_url, engine):
            await until(lambda: all(r.state == "sent" for r in welcomes()), 30, "the welcomes to go out")
    asyncio.run(work())
    got = [r for r in receiver.requests if r.body["step"] == "welcome"]
    assert sorted(r.body["member"]["id"] for r in got) == ["m000001", "stranger"]  # once each
    text = {r.body["member"]["id"]: r.body["text"] for r in got}
    assert text["m000001"] == "欢迎顾客1加入测试群2！导购小李"
    assert text["stranger"] == "欢迎加入测试群1！"


def test_groups_added_through_the_api_join_the_pool_and_bad_uploads_store_nothing(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event", groups=1, capacity=3, margin=1))
    code = codes_of(engine, event_id)[("g1", "A")]
    auth = {"Authorization": "Bearer tok"}
    url = f"/api/events/{event_id}/groups"
    with TestClient(create_app(make_settings(REDIS_URL=redis_url, ORCH_API_TOKEN="tok"))) as api:
        assert group_shown(api.get(f"/s/{code}").text) == 1
        api.cookies.clear()
        assert group_shown(api.get(f"/s/{code}").text) == 0  # the only group reached its margin

        bad = [
            ("?expires=2027-06-16T00:00", b"GIF89a not a group code", 422, "the uploaded picture is not a PNG or JPEG image", "body"),
            ("?expires=2027-06-16T00:00", b"", 422, "the body must be the group's QR picture", "body"),
            ("?expires=2020-01-01T00:00", PNG, 422, "the code expired at 2020-01-01T00:00:00+08:00", "query"),
            ("?expires=next-week", PNG, 422, "'expires' must be when the code stops working", "query.expires"),
            ("?expires=2027-06-16T00:00&capacity=10&margin=12", PNG, 422, "margin 12 is above the capacity 10", "query"),
            ("?expires=2027-06-16T00:00&margn=12", PNG, 422, "unknown parameter 'margn'", "query"),
        ]
        for query, body, status, message, at in bad:
            r = api.post(url + query, content=body, headers=auth)
            assert (r.status_code, r.json().get("at")) == (status, at) and message in r.json()["error"], (query, r.json())
        assert api.post(url + "?expires=2027-06-16T00:00", content=PNG).status_code == 401
        assert api.post("/api/events/nope/groups?expires=2027-06-16T00:00", content=PNG, headers=auth).status_code == 404
        assert [g.number for g in groups_of(engine, event_id)] == [1], "bad uploads store nothing"

        r = api.post(url + "?expires=2027-06-16T00:00&name=加开群", content=PNG + b"new", headers=auth)
        assert r.status_code == 201 and r.json() == {"number": 2}
        api.cookies.clear()
        assert group_shown(api.get(f"/s/{code}").text) == 2  # the next scanner reaches the new group at once
        assert [(g.number, g.name) for g in groups_of(engine, event_id)] == [(1, "测试群1"), (2, "加开群")]
        asyncio.run(_cancel(engine, redis_url, event_id))
        r = api.post(url + "?expires=2027-06-16T00:00", content=PNG, headers=auth)
        assert r.status_code == 409 and "cancelled" in r.json()["error"]


async def _cancel(engine: Engine, redis_url: str, event_id: str) -> None:
    async with arq_pool(redis_url) as pool:
        await scheduling.cancel(engine, pool, event_id)


def test_the_visitor_cookie_is_first_party_random_and_recognised_on_the_next_scan(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings], client: TestClient) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event", groups=2, margin=45))
    code = codes_of(engine, event_id)[("g1", "A")]
    first = client.get(f"/s/{code}")
    cookie = first.headers["set-cookie"]
    assert re.fullmatch(r"ov=[0-9a-f]{32}; HttpOnly; Max-Age=31536000; Path=/; SameSite=lax", cookie), cookie
    again = client.get(f"/s/{code}")  # the client sends the cookie back
    assert "set-cookie" not in again.headers and group_shown(again.text) == group_shown(first.text) == 1
    client.cookies.clear()
    https = client.get(f"https://testserver/s/{code}")
    assert https.headers["set-cookie"].endswith("; Secure")

    async def counts() -> dict[str, int]:
        redis = Redis.from_url(redis_url)
        try:
            return await scan_counts(redis, event_id)
        finally:
            await redis.aclose()
    seen = asyncio.run(counts())
    assert seen["total"] == 3 and seen["people"] == 2 and seen["g:g1"] == 3 and seen["gv:g1:A"] == 3


def test_a_rehearsals_scans_and_joins_fall_in_its_own_minutes_and_recount_the_same(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    from orchestrator.funnel import Funnel
    from orchestrator.instream import InStream
    from orchestrator.recount import rebuild
    from orchestrator.scheduling import event_clock, get_event

    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_API_TOKEN="tok", REDIS_URL=redis_url)

    async def scheduled() -> str:
        async with arq_pool(redis_url) as pool:
            return (await scheduling.schedule(engine, pool, settings, pool_event(tmp_path / "event"), speed=600)).event_id
    event_id = asyncio.run(scheduled())
    code = codes_of(engine, event_id)[("g1", "A")]
    with TestClient(create_app(settings)) as c:
        for _ in range(3):  # three people
            c.cookies.clear()
            assert c.get(f"/s/{code}").status_code == 200
        answer = c.post(f"/api/events/{event_id}/joins", json={"joins": [{"person": "m000001", "guide": "g1"}, {"person": "m000002"}]},
                        headers={"Authorization": "Bearer tok"})
        assert answer.status_code == 200 and answer.json()["recorded"] == 2
    event_now = event_clock(get_event(engine, event_id)).now()

    async def figures() -> tuple[dict[str, Any], dict[str, Any]]:
        redis = Redis.from_url(redis_url)
        try:
            await InStream(redis).move_all(engine)  # the scan log into the store
            live = await Funnel(redis).figures(event_id, ["g1", "g2"], ["A", "B"])
            await rebuild(redis, engine, event_id)
            return live, await Funnel(redis).figures(event_id, ["g1", "g2"], ["A", "B"])
        finally:
            await redis.aclose()
    live, again = asyncio.run(figures())
    minutes = {step: live["minutes"][step] for step in ("scanned", "joined")}
    assert sum(minutes["scanned"].values()) == 3 and sum(minutes["joined"].values()) == 2, minutes
    for step, per in minutes.items():
        for minute in per:  # the event's clock (2027, ten event minutes a real second), not the wall clock's
            at = datetime.fromisoformat(minute).replace(tzinfo=timezone.utc)
            assert abs((event_now - at).total_seconds()) < 24 * 3600, f"{step} counted in {minute}, the event's clock says {event_now}"
    assert again == live, "rebuilt from the store: the same minutes"
