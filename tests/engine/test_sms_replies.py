"""SMS replies: TD (and T, N, R, 退订) opts the number out of SMS from the next send on; bad pushes store nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from orchestrator import scheduling
from orchestrator.settings import Settings
from orchestrator.smsreplies import is_opt_out
from orchestrator.store import OptOut, SmsReceipt
from tests.engine.conftest import arq_pool, running_worker, until
from tests.engine.eventfiles import EventFiles, crowd
from tests.engine.receiver import Receiver
from tests.engine.test_event_run import JUST_BEFORE, closed, sends
from web.app import create_app

OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
RECEIPT = SmsReceipt.__table__  # type: ignore[attr-defined]


def reply(phone: str, content: str) -> dict[str, object]:
    return {"phone_number": phone, "content": content, "send_time": "2027-06-10 18:05:00", "sign_name": "测试品牌", "dest_code": "1", "sequence_id": 1}


@pytest.mark.parametrize(("content", "stops"), [
    ("TD", True), ("td", True), (" T ", True), ("n", True), ("R", True), ("退订", True), ("TD。", True), ("我要退订了", True),
    ("好的", False), ("TDX", False), ("几点开播", False), ("", False)])
def test_which_replies_opt_out(content: str, stops: bool) -> None:
    assert is_opt_out(content) is stops


def test_a_member_who_replies_td_mid_event_gets_no_sms_afterwards(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver, make_settings: Callable[..., Settings]) -> None:
    people = crowd(3)
    files = EventFiles(people=people, preview=None, live_end="2027-06-10 20:00",
                       reminders=[("hour", "T-1h", "[sms]"), ("soon", "T-10m", "[sms]")])
    settings = make_settings(receiver, ORCH_SMS_INBOUND_KEY="k3y", REDIS_URL=redis_url)

    async def go() -> str:
        async with arq_pool(redis_url) as pool:
            event_id = (await scheduling.schedule(engine, pool, settings, files.write(tmp_path / "event"), speed=300,
                                                  clock_from=JUST_BEFORE)).event_id
        async with running_worker(settings, redis_url, engine):
            await until(lambda: sum(r.step_id == "reminder:hour" and r.state == "sent" for r in sends(engine, event_id)) == 3, 60,
                        "the first reminder to reach all three")
            with TestClient(create_app(settings)) as web:  # m000002 replies TD to it, between the two reminders
                answer = web.post("/inbound/sms/k3y", json=[reply(f"+86 {people[1].phone}", "TD"), reply(people[0].phone, "几点开播")])
                assert answer.status_code == 200 and answer.json() == {"code": 0, "msg": "成功"}
            await until(closed(engine, event_id), 90, "the event to close")
        return event_id

    event_id = asyncio.run(go())
    second = {r.member_id: r for r in sends(engine, event_id) if r.step_id == "reminder:soon"}
    assert {m for m, r in second.items() if r.state == "sent"} == {"m000001", "m000003"}
    assert "m000002" not in second or second["m000002"].state == "skipped", "after TD: no SMS"
    got = receiver.by_step()
    assert got["reminder:hour"]["m000002"] == 1 and got["reminder:soon"]["m000002"] == 0
    with engine.connect() as conn:
        rows = conn.execute(select(OPTOUT.c.address, OPTOUT.c.channel, OPTOUT.c.source)).all()
    assert [tuple(r) for r in rows] == [(people[1].phone, "sms", "sms-reply")], "only the TD, kept with its source"


def test_bad_pushes_are_refused_and_store_nothing(engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(REDIS_URL=redis_url, ORCH_SMS_INBOUND_KEY="k3y"))) as web:
        assert web.post("/inbound/sms/wrong", json=[reply("13900000001", "TD")]).status_code == 404
        not_json = web.post("/inbound/sms/k3y", content=b"TD", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["msg"]
        for body, at in [([reply("13900000001", "TD"), reply("12345", "TD")], "[1].phone_number"),
                         ([reply("13900000001", "TD"), {"content": "TD"}], "[1]"),
                         ([reply("13900000001", "TD"), "TD"], "[1]"),
                         ([], "body")]:
            r = web.post("/inbound/sms/k3y", json=body)
            assert r.status_code == 422 and r.json()["at"] == at, r.json()
    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as off:
        assert off.post("/inbound/sms/k3y", json=[reply("13900000001", "TD")]).status_code == 503
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OPTOUT)).scalar_one() == 0


def receipt(phone: str, **kw: object) -> dict[str, object]:
    return {"phone_number": phone, "send_time": "2027-06-10 18:05:00", "report_time": "2027-06-10 18:05:03", "success": True,
            "err_code": "DELIVERED", "err_msg": "用户接收成功", "sms_size": "1", "biz_id": "123456789^0", "out_id": "", **kw}


def test_bad_receipt_pushes_are_refused_by_name_and_store_nothing(engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(REDIS_URL=redis_url, ORCH_SMS_INBOUND_KEY="k3y"))) as web:
        assert web.post("/inbound/sms-report/wrong", json=[receipt("13900000001")]).status_code == 404
        not_json = web.post("/inbound/sms-report/k3y", content=b"[{", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["msg"]
        for body, at, words in [([receipt("13900000001"), receipt("12345")], "[1].phone_number", "not a mainland mobile number"),
                                ([receipt("13900000001"), receipt("13900000002", biz_id="")], "[1].biz_id", "BizId"),
                                ([receipt("13900000001", success="true")], "[0].success", "true or false"),
                                ([receipt("13900000001", report_time="10/06/2027")], "[0].report_time", "YYYY-MM-DD HH:MM:SS"),
                                ([receipt("13900000001"), 7], "[1]", "object"),
                                ([], "body", "at least one")]:
            r = web.post("/inbound/sms-report/k3y", json=body)
            assert r.status_code == 422 and r.json()["at"] == at and words in r.json()["msg"], r.json()
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(RECEIPT)).scalar_one() == 0, "a bad push keeps none of its receipts"
        good = web.post("/inbound/sms-report/k3y", json=[receipt("+86 139 0000 0001"), receipt("13900000001", success=False, err_code="UNDELIV")])
        assert good.json() == {"code": 0, "msg": "成功"}
        with engine.connect() as conn:
            kept = conn.execute(select(RECEIPT.c.phone, RECEIPT.c.delivered, RECEIPT.c.code)).all()
        assert [tuple(k) for k in kept] == [("13900000001", True, "DELIVERED")], "the number normalised; the first receipt of a number wins"
    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as off:
        assert off.post("/inbound/sms-report/k3y", json=[receipt("13900000001")]).status_code == 503
