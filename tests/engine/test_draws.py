"""The draws of a running event: comments and deposits in through the signed API, a draw at each
whole hour and the deposit draw, the audit bundle at close, checked by verify and the docs' script."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from orchestrator import drawproof, eventlog
from orchestrator.channels.webhook import sign
from orchestrator.cli import cli
from orchestrator.settings import Settings
from orchestrator.store import Comment, Draw, Payment
from tests.engine.eventfiles import EventFiles, crowd
from tests.engine.test_event_run import run_event, step_states
from tests.engine.test_pool import quiet, schedule
from tests.orchestrator.test_drawproof import standalone
from web.app import create_app

pytestmark = pytest.mark.db
CST = timezone(timedelta(hours=8))
SECRET = "ingest-secret"
DRAWS = ("  screenshot_draw: {winners_per_draw: 2, screen_size: 8, keyword: 焕新, prize: cup}\n"
         "  deposit_draw: {products: [{id: sofa, name: 沙发, deposit_cny: 100}, {id: bed, name: 床, deposit_cny: 100}], "
         "winners: 1, prize: cup, cutoff: '2027-06-10 20:30'}")
SHILL = "{id: shill1, name: 托儿, role: shill, live_ids: ['wechat_channels:u-shill']}"


def signed(body: Any) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body, ensure_ascii=False).encode()
    ts = str(int(time.time()))
    return raw, {"X-Orchestrator-Timestamp": ts, "X-Orchestrator-Signature": sign(SECRET, ts, raw), "Content-Type": "application/json"}


def comment(n: int, user: str, text: str, at: datetime) -> dict[str, Any]:
    return {"platform": "wechat_channels", "room": "r1", "message_id": f"m{n}", "user_id": user, "name": f"观众{user}", "text": text,
            "time": at.isoformat()}


def stream() -> list[dict[str, Any]]:
    """Comments before each whole hour: everyone says the keyword, the shill most of all."""
    out = []
    n = 0
    for hour in (20, 21):
        base = datetime(2027, 6, 10, hour - 1, 58, tzinfo=CST)
        for i in range(6):
            n += 1
            out.append(comment(n, f"u{i}", "焕新 加油", base + timedelta(seconds=i)))
            n += 1
            out.append(comment(n, "u-shill", "焕新焕新", base + timedelta(seconds=i, milliseconds=500)))
        n += 1
        out.append(comment(n, "u-quiet", "好看", base + timedelta(seconds=30)))  # on screen, but without the keyword
    return out


@pytest.fixture
def draw_event(tmp_path: Path) -> Path:
    return EventFiles(people=crowd(3), draws=DRAWS, accounts=SHILL).write(tmp_path / "event")


def test_an_event_draws_every_hour_and_its_deposits_and_anyone_can_check_them(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Any, make_settings: Callable[..., Settings], draw_event: Path) -> None:
    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, REDIS_URL=redis_url)

    async def go() -> str:
        from tests.engine.conftest import arq_pool, running_worker, until
        from orchestrator import scheduling
        from tests.engine.test_event_run import closed

        async with arq_pool(redis_url) as pool:
            result = await scheduling.schedule(engine, pool, settings, draw_event, speed=3600)
        with TestClient(create_app(settings)) as api:  # the stream and the shop's deposits arrive before the draws
            body, headers = signed({"comments": stream()})
            assert api.post(f"/api/events/{result.event_id}/comments", content=body, headers=headers).json() == {"stored": 26, "duplicates": 0}
            pays = [{"payment_id": f"p{i}", "kind": "deposit", "order_id": f"o{i}", "person": f"buyer{i}", "product": "sofa" if i < 4 else "bed",
                     "amount_fen": 10000, "time": "2027-06-10 20:10"} for i in range(6)]
            pays += [{"payment_id": "r1", "kind": "refund", "order_id": "o0", "person": "buyer0", "amount_fen": 10000, "time": "2027-06-10 20:20"},
                     {"payment_id": "late", "kind": "deposit", "order_id": "o9", "person": "late-buyer", "product": "bed", "amount_fen": 10000,
                      "time": "2027-06-10 20:45"}]
            body, headers = signed({"payments": pays})
            assert api.post(f"/api/events/{result.event_id}/payments", content=body, headers=headers).json() == {"stored": 8, "duplicates": 0}
        async with running_worker(settings, redis_url, engine):
            await until(closed(engine, result.event_id), 90, "the event to close")
        return result.event_id

    event_id = asyncio.run(go())
    with engine.connect() as conn:
        draws = {d.draw_id: d for d in conn.execute(select(Draw.__table__).where(Draw.__table__.c.event_id == event_id))}  # type: ignore[attr-defined]
    assert set(draws) == {"draw:screenshot:1", "draw:screenshot:2", "deposit:sofa", "deposit:bed"}
    for n, hour in ((1, 20), (2, 21)):
        freeze = draws[f"draw:screenshot:{n}"].freeze_at.astimezone(CST)
        assert freeze.hour == hour and freeze.minute == 0, "frozen inside the hour's first minute"
    # the screen holds the last 8 comments: u3, u4, u5 with the keyword, the shill between them, u-quiet without it
    d1, d2 = draws["draw:screenshot:1"], draws["draw:screenshot:2"]
    assert json.loads(d1.entrants) == ["u3", "u4", "u5"], "shill accounts and comments without the keyword never enter"
    first = json.loads(d1.winners)
    assert len(first) == 2 and set(first) <= {"u3", "u4", "u5"}
    left = sorted({"u3", "u4", "u5"} - set(first))
    assert json.loads(d2.entrants) == left and json.loads(d2.winners) == left, "earlier winners do not win again; fewer entrants than places: all win"
    assert json.loads(draws["deposit:sofa"].entrants) == ["buyer1", "buyer2", "buyer3"]  # buyer0 refunded
    assert json.loads(draws["deposit:bed"].entrants) == ["buyer4", "buyer5"]  # the late deposit is past the cut-off
    notes = step_states(engine, event_id)
    assert "2 winners of" in (notes["draw:screenshot:1"].note or "")
    alerts = [e for e in eventlog.entries(engine, event_id) if e["kind"] == "draw"]
    assert len(alerts) == 4 and all("*" in e["message"] for e in alerts[:2]), "names are masked in what staff and hosts see"

    bundle = Path(settings.data_dir) / "audit" / f"{event_id}-audit.json"
    data = json.loads(bundle.read_text(encoding="utf-8"))
    assert data["seed"] and drawproof.verify(data) == []
    notice = (Path(settings.data_dir) / "notices" / f"{event_id}-notice.txt").read_text(encoding="utf-8")
    assert data["commitment"] in notice and "整点截屏抽奖" in notice and "定金抽奖" in notice
    ok = CliRunner().invoke(cli, ["verify", str(bundle)])
    assert ok.exit_code == 0 and ok.output.count(": match") == 5, ok.output  # the commitment and 4 draws
    script = standalone(tmp_path)
    assert subprocess.run([sys.executable, str(script), str(bundle)], capture_output=True, text=True).returncode == 0

    data["draws"][1]["entrants"][0] = "someone-else"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    bad = CliRunner().invoke(cli, ["verify", str(tampered)])
    assert bad.exit_code == 1 and f"draws[1] ({data['draws'][1]['id']}).entrant_hash" in bad.output
    assert subprocess.run([sys.executable, str(script), str(tampered)], capture_output=True, text=True).returncode == 1
    assert list((Path(settings.data_dir) / "draws").glob("*.png")), "the frozen screens are drawn"


def test_no_comments_void_the_draw_and_a_redraw_is_linked_not_silent(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Any, make_settings: Callable[..., Settings]) -> None:
    settings = quiet(make_settings)
    event_id = asyncio.run(run_event(engine, settings, redis_url, EventFiles(people=crowd(3)).write(tmp_path / "event")))
    with engine.connect() as conn:
        states = dict(conn.execute(select(Draw.__table__.c.draw_id, Draw.__table__.c.reason)).all())  # type: ignore[attr-defined]
    assert states and all(reason == "no comments on the screen at the freeze moment" for reason in states.values())

    from orchestrator.draws import DrawError, redraw

    with pytest.raises(DrawError, match="is not a winner"):
        redraw(engine, event_id, "draw:screenshot:1", "nobody", "test")
    with pytest.raises(DrawError, match="has no draw"):
        redraw(engine, event_id, "draw:nope", "nobody", "test")


def test_comment_batches_that_are_unsigned_replayed_oversized_or_malformed_store_nothing(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, REDIS_URL=redis_url)
    event_id = schedule(engine, settings, redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))
    url = f"/api/events/{event_id}/comments"
    good = comment(1, "u1", "你好", datetime(2027, 6, 10, 19, 30, tzinfo=CST))
    with TestClient(create_app(settings)) as api:
        raw, headers = signed(good)
        assert api.post(url, content=raw, headers={"Content-Type": "application/json"}).status_code == 401  # unsigned
        old = str(int(time.time()) - 3600)
        replay = {**headers, "X-Orchestrator-Timestamp": old, "X-Orchestrator-Signature": sign(SECRET, old, raw)}
        r = api.post(url, content=raw, headers=replay)
        assert r.status_code == 401 and "5 minutes" in r.json()["error"]
        r = api.post(url, content=raw, headers={**headers, "X-Orchestrator-Signature": sign("wrong", headers["X-Orchestrator-Timestamp"], raw)})
        assert r.status_code == 401 and "does not match" in r.json()["error"]
        big, big_headers = signed({"comments": [{**good, "message_id": f"b{i}", "text": "长" * 1900} for i in range(200)]})
        assert api.post(url, content=big, headers=big_headers).status_code == 413
        for body, status, at, message in [
            ({"comments": [good, {**good, "message_id": "m2", "time": "yesterday"}]}, 422, "comments[1].time", "is not ISO 8601"),
            ({**good, "platform": "myspace"}, 422, "body.platform", "is not one of"),
            ({**good, "user": "x"}, 422, "body", "unknown field 'user'"),
            ({"comments": []}, 422, "body", "at least one"),
            ({**good, "time": 1700000000}, 422, "body.time", "not Unix milliseconds"),
        ]:
            raw2, h2 = signed(body)
            r = api.post(url, content=raw2, headers=h2)
            assert (r.status_code, r.json().get("at")) == (status, at) and message in r.json()["error"], r.json()
        raw3, h3 = b"{not json", signed({})[1]
        h3["X-Orchestrator-Signature"] = sign(SECRET, h3["X-Orchestrator-Timestamp"], raw3)
        assert api.post(url, content=raw3, headers=h3).status_code == 400
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Comment.__table__)).scalar_one() == 0, "nothing stored"  # type: ignore[attr-defined]

        raw, headers = signed({"comments": [good, {**good, "text": "改过"}, {**good, "message_id": "m2"}]})  # a message id twice in a batch
        assert api.post(url, content=raw, headers=headers).json() == {"stored": 2, "duplicates": 1}
        raw, headers = signed(good)  # delivered again later
        assert api.post(url, content=raw, headers=headers).json() == {"stored": 0, "duplicates": 1}
        from tests.engine.test_comment_sources import move_waiting

        assert asyncio.run(move_waiting(engine, redis_url)) == 2 and asyncio.run(move_waiting(engine, redis_url)) == 0
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Comment.__table__)).scalar_one() == 2  # type: ignore[attr-defined]
            texts = dict(conn.execute(select(Comment.message_id, Comment.text)).all())  # type: ignore[call-overload]
            assert texts == {"m1": "你好", "m2": "你好"}, "the first sighting is the one kept"
        bad_pay, hp = signed({"payment_id": "p1", "kind": "deposit", "order_id": "o1", "person": "b", "product": "sofa", "amount_fen": 99.5,
                              "time": "2027-06-10 20:00"})
        r = api.post(f"/api/events/{event_id}/payments", content=bad_pay, headers=hp)
        assert r.status_code == 422 and "never a decimal" in r.json()["error"]
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(Payment.__table__)).scalar_one() == 0  # type: ignore[attr-defined]
    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as off:
        raw, headers = signed(good)
        assert off.post(url, content=raw, headers=headers).status_code == 503


def test_a_beacon_is_mixed_in_a_live_that_ends_early_voids_later_draws_and_the_notice_is_public(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Any, make_settings: Callable[..., Settings], draw_event: Path) -> None:
    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, REDIS_URL=redis_url)
    env = {"DATABASE_URL": settings.database_url, "ORCH_DATA_DIR": settings.data_dir}
    randomness = "ab" * 32

    async def go() -> str:
        from orchestrator import scheduling
        from tests.engine.conftest import arq_pool, running_worker, until
        from tests.engine.test_event_run import closed

        async with arq_pool(redis_url) as pool:
            result = await scheduling.schedule(engine, pool, settings, draw_event, speed=3600)
        bad = CliRunner().invoke(cli, ["beacon", result.event_id, "--round", "100", "--randomness", "xyz"], env=env)
        assert bad.exit_code != 0 and "64 lower-case hex" in bad.output + str(bad.exception or "")
        ok = CliRunner().invoke(cli, ["beacon", result.event_id, "--round", "4200000", "--randomness", randomness], env=env)
        assert ok.exit_code == 0, ok.output
        ended = CliRunner().invoke(cli, ["live-ended", result.event_id, "--at", "2027-06-10 20:30"], env=env)
        assert ended.exit_code == 0 and "the live ended at 2027-06-10T20:30:00+08:00" in ended.output, ended.output
        with TestClient(create_app(settings)) as api:
            body, headers = signed({"comments": stream()})
            assert api.post(f"/api/events/{result.event_id}/comments", content=body, headers=headers).status_code == 200
            page = api.get(f"/notice/{result.event_id}")
            assert page.status_code == 200 and "整点截屏抽奖" in page.text and "种子承诺" in page.text
            text = api.get(f"/notice/{result.event_id}.txt")
            assert text.headers["content-type"].startswith("text/plain") and text.text.startswith("【活动公示】引擎测试直播")
            assert api.get("/notice/no-such-event").status_code == 404
        async with running_worker(settings, redis_url, engine):
            await until(closed(engine, result.event_id), 90, "the event to close")
        return result.event_id

    event_id = asyncio.run(go())
    data = json.loads((Path(settings.data_dir) / "audit" / f"{event_id}-audit.json").read_text(encoding="utf-8"))
    by_id = {d["id"]: d for d in data["draws"]}
    assert by_id["draw:screenshot:1"]["beacon"] == f"drand:4200000:{randomness}" and by_id["draw:screenshot:1"]["winners"]
    assert by_id["draw:screenshot:1"]["winners"] == drawproof.winners(data["seed"], "draw:screenshot:1", by_id["draw:screenshot:1"]["entrants"],
                                                                     2, f"drand:4200000:{randomness}")
    assert by_id["draw:screenshot:2"]["state"] == "void" and by_id["draw:screenshot:2"]["reason"].startswith("the live ended at")
    assert drawproof.verify(data) == []
    late = CliRunner().invoke(cli, ["beacon", event_id, "--round", "4200001", "--randomness", randomness], env=env)
    assert late.exit_code != 0 and "before the first draw" in late.output + str(late.exception or "")
