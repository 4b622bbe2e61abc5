"""The WeCom join path against a fake WeCom speaking its wire format: join ways per guide, the scan
page showing the guide's code, and joins learned from encrypted, signed callbacks."""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from redis.asyncio import Redis
from sqlalchemy import Engine, select
from wechatpy.enterprise.crypto import WeChatCrypto

from orchestrator.cli import cli
from orchestrator.eligibility import optouts_of
from orchestrator.joins import joined
from orchestrator.settings import Settings
from orchestrator.playbook import Member
from orchestrator.store import Join, OptOut, Send
from orchestrator.wecom import WeComClient, WeComError
from orchestrator.wecom_crypto import CallbackRejected, WeComCrypto, parse_event
from orchestrator.wecomjoins import open_join_ways
from tests.engine.eventfiles import EventFiles, crowd
from orchestrator.fakes.wecom import AES_KEY, CORP_ID, SECRET, TOKEN, FakeWeCom, RunningWeCom
from tests.engine.test_event_run import run_event, step_states
from tests.engine.test_pool import WebProcess, codes_of, quiet, schedule

pytestmark = pytest.mark.db
JOIN = Join.__table__  # type: ignore[attr-defined]
SEND = Send.__table__  # type: ignore[attr-defined]
OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
GUIDES = "id,name,channel_code,contact_code\ng1,小李,G01,wx_xiaoli\ng2,小王,G02,wx_xiaowang\n"
WECOM_JOIN = ('join: {kind: wecom_join_way, capacity: 500, margin: 480, group_name: "测试群{n}", state_prefix: "t-", chat_ids: [chat-1], groups_per_join_way: 2, '
              'welcome: "欢迎加入{{ group.name }}{% if guide %}，导购{{ guide.name }}{% endif %}"}')
ROUTES = "sms=console,email=console,wecom_customer=console"


@pytest.fixture
def wecom() -> Iterator[FakeWeCom]:
    with RunningWeCom() as fake:
        fake.add_chat("chat-1")
        yield fake


def wecom_event(folder: Path) -> Path:
    return EventFiles(people=crowd(3), guides=GUIDES, variants="[{id: A, hook: 进群抽奖}]", join=WECOM_JOIN).write(folder)


def client_for(fake: FakeWeCom, session: aiohttp.ClientSession, redis: Redis, **kw: Any) -> WeComClient:
    return WeComClient(session, redis, CORP_ID, SECRET, base_url=fake.api, **kw)


# --- crypto ------------------------------------------------------------------------------------


def test_our_callback_crypto_agrees_with_wechatpy_both_ways() -> None:
    ours = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    theirs = WeChatCrypto(TOKEN, AES_KEY, CORP_ID)
    body, signature = ours.seal("<xml><Content>你好</Content></xml>", "1700000000", "n1")
    assert theirs.decrypt_message(body, signature, "1700000000", "n1") == "<xml><Content>你好</Content></xml>"
    sealed = theirs.encrypt_message("<xml><Content>进群</Content></xml>", "n2", "1700000001")
    sig = sealed.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    assert ours.open(sig, "1700000001", "n2", sealed.encode()) == {"Content": "进群"}


def test_bad_callbacks_are_named_for_what_is_wrong() -> None:
    ours = WeComCrypto(TOKEN, AES_KEY, CORP_ID)
    body, signature = ours.seal("<xml/>", "1700000000", "n1")
    with pytest.raises(CallbackRejected, match="msg_signature does not match"):
        ours.open("0" * 40, "1700000000", "n1", body)
    other = WeComCrypto(TOKEN, AES_KEY, "ww-another-corp")
    with pytest.raises(CallbackRejected, match="another corp id"):
        other.open(signature, "1700000000", "n1", body)
    with pytest.raises(CallbackRejected, match="not XML"):
        ours.open(signature, "1700000000", "n1", b"garbage")
    with pytest.raises(ValueError, match="43 characters"):
        WeComCrypto(TOKEN, "short", CORP_ID)
    assert parse_event("<xml><MemChangeList><![CDATA[wm1,wm2]]></MemChangeList></xml>") == {"MemChangeList": ["wm1", "wm2"]}


# --- the client ---------------------------------------------------------------------------------


def test_the_client_caches_its_token_refreshes_it_once_and_backs_off_when_busy(wecom: FakeWeCom, redis_url: str) -> None:
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    async def go() -> None:
        redis = Redis.from_url(redis_url)
        await redis.delete(f"wecom:token:{CORP_ID}:*")
        async with aiohttp.ClientSession() as session:
            client = client_for(wecom, session, redis, pause=pause)
            await client.forget_token()
            await client.group_chat("chat-1")
            await client.group_chat("chat-1")
            assert wecom.calls["gettoken"] == 1  # cached in Redis: shared by every process
            shared = client_for(wecom, session, redis)
            await shared.group_chat("chat-1")
            assert wecom.calls["gettoken"] == 1

            wecom.expire_tokens()  # the cached token now answers 42001: fetched again once, the call retried
            await client.group_chat("chat-1")
            assert wecom.calls["gettoken"] == 2

            wecom.fail_next["externalcontact/groupchat/get"] += [45009, -1]
            await client.group_chat("chat-1")
            assert pauses == [1.0, 2.0]  # exponential backoff, then success

            wecom.fail_next["externalcontact/groupchat/get"] += [-1, -1, -1]
            with pytest.raises(WeComError, match="errcode -1"):
                await client.group_chat("chat-1")
            with pytest.raises(WeComError, match="errcode 701008"):
                await client.group_chat("no-such-chat")

            wrong = WeComClient(session, redis, CORP_ID, "wrong-secret", base_url=wecom.api)
            with pytest.raises(WeComError, match="gettoken answered errcode 40001"):
                await wrong.group_chat("chat-1")
        await redis.aclose()
    asyncio.run(go())


# --- the join path --------------------------------------------------------------------------------


def test_the_join_step_makes_one_join_way_per_guide_with_its_state(tmp_path: Path, engine: Engine, redis_url: str, wecom: FakeWeCom,
                                                                   make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ORCH_ROUTES=ROUTES, **wecom.env())
    event_id = asyncio.run(run_event(engine, settings, redis_url, wecom_event(tmp_path / "event")))
    note = step_states(engine, event_id)["join:open"].note
    assert note is not None and note.startswith("WeCom join ways: 2 made now, 0 before (2 guides)")
    made = wecom.bodies["externalcontact/groupchat/add_join_way"]
    assert sorted(b["state"] for b in made) == ["t-G01", "t-G02"]
    assert all(b["chat_id_list"] == ["chat-1"] and b["room_base_name"] == "测试群" and b["auto_create_room"] == 1 for b in made)


def test_without_wecom_settings_the_join_step_says_so(tmp_path: Path, engine: Engine, redis_url: str,
                                                      make_settings: Callable[..., Settings]) -> None:
    event_id = asyncio.run(run_event(engine, quiet(make_settings), redis_url, wecom_event(tmp_path / "event")))
    assert "WeCom is not configured" in (step_states(engine, event_id)["join:open"].note or "")


def test_joins_arrive_through_callbacks_once_each_and_bad_callbacks_count_nowhere(
        tmp_path: Path, engine: Engine, redis_url: str, database_url: str, wecom: FakeWeCom, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(REDIS_URL=redis_url, ORCH_ROUTES=ROUTES, **wecom.env())
    event_id = schedule(engine, settings, redis_url, wecom_event(tmp_path / "event"))

    async def make_ways() -> None:
        redis = Redis.from_url(redis_url)
        async with aiohttp.ClientSession() as session:
            from orchestrator.scheduling import get_event, loaded_event

            loaded = loaded_event(engine, get_event(engine, event_id), members=False)
            assert await open_join_ways(client_for(wecom, session, redis), engine, event_id, loaded) == (2, 0)
            assert await open_join_ways(client_for(wecom, session, redis), engine, event_id, loaded) == (0, 2)  # a retried step
        await redis.aclose()
    asyncio.run(make_ways())

    # a group made later in the WeCom app goes behind every guide's join way (update_join_way), once
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data"), **wecom.env()}
    added = CliRunner().invoke(cli, ["groups", "add", event_id, "--wecom-chat", "chat-2"], env=env)
    assert added.exit_code == 0, added.output
    assert sorted(w["chat_id_list"] for w in wecom.join_ways.values()) == [["chat-1", "chat-2"]] * 2
    again = CliRunner().invoke(cli, ["groups", "add", event_id, "--wecom-chat", "chat-2"], env=env)
    assert again.exit_code == 0 and "behind 0 join ways" in again.output
    full = CliRunner().invoke(cli, ["groups", "add", event_id, "--wecom-chat", "chat-3"], env=env)
    assert full.exit_code == 1 and "already holds 2 groups" in full.output + str(full.exception or "")
    assert len(wecom.bodies["externalcontact/groupchat/update_join_way"]) == 2

    web = WebProcess({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_ROUTES": ROUTES,
                      "ORCH_API_TOKEN": "tok", **wecom.env()})
    try:
        web.wait()
        url = web.url + "/wecom/callback"

        # WeCom checks the URL first: we answer the decrypted echostr
        echostr = wecom.crypto.encrypt("echo-1234")
        _body, params = wecom.sealed("x")
        params["msg_signature"] = __import__("orchestrator.wecom_crypto", fromlist=["signature"]).signature(
            TOKEN, params["timestamp"], params["nonce"], echostr)
        with urllib.request.urlopen(url + "?" + urllib.parse.urlencode({**params, "echostr": echostr}), timeout=10) as r:
            assert r.read().decode() == "echo-1234"

        # the scan page shows the scanner's guide's join way
        code = codes_of(engine, event_id)[("g1", "A")]
        with urllib.request.urlopen(f"{web.url}/s/{code}", timeout=10) as r:
            page = r.read().decode()
        config = next(c for c, w in wecom.join_ways.items() if w["state"] == "t-G01")
        assert wecom.join_ways[config]["qr_code"] in page

        # or through the API: already there, nothing to update; a bad one is refused
        api = f"{web.url}/api/events/{event_id}/groups?wecom_chat="
        assert wecom.post(api + "chat-2", b"", {}, bearer="tok") == (200, '{"join_ways_updated":0}')
        status, answer = wecom.post(api + "chat-9", b"", {}, bearer="tok")
        assert status == 422 and "already holds 2 groups" in answer

        # a join through guide 1's code
        message = wecom.join("chat-1", "wmCustomer1", "t-G01")
        body, params = wecom.sealed(message)
        assert wecom.post(url, body, params) == (200, "success")
        assert joined(engine, event_id) == {"wmCustomer1": None}
        with engine.connect() as conn:
            row = conn.execute(select(JOIN).where(JOIN.c.person == "wmCustomer1")).one()
        assert (row.guide_id, row.source) == ("g1", "wecom")
        lookups = wecom.calls["externalcontact/groupchat/get"]

        # WeCom retries the same callback: answered, counted nowhere, not even looked up
        assert wecom.post(url, body, params) == (200, "success")
        assert wecom.calls["externalcontact/groupchat/get"] == lookups

        # a forged one (bad signature) and a replay of an old one: 4xx, nothing stored
        forged = wecom.join("chat-1", "wmForged", "t-G01")
        body, params = wecom.sealed(forged)
        assert wecom.post(url, body, {**params, "msg_signature": "0" * 40})[0] == 403
        old = wecom.join("chat-1", "wmReplayed", "t-G02")
        body, params = wecom.sealed(old, timestamp=int(time.time()) - 3600)
        status, answer = wecom.post(url, body, params)
        assert status == 403 and "replayed" in answer
        assert wecom.post(url, b"<xml><Encrypt>not base64!</Encrypt></xml>", wecom.sealed("x")[1])[0] in (400, 403)
        assert set(joined(engine, event_id)) == {"wmCustomer1"}
        assert wecom.calls["externalcontact/groupchat/get"] == lookups

        # the older comma-separated member list, after the token expired: still attributed, to guide 2
        wecom.expire_tokens()
        body, params = wecom.sealed(wecom.join("chat-1", "wmCustomer2", "t-G02", items=False))
        assert wecom.post(url, body, params) == (200, "success")
        # someone who joined through another code (not ours) is not an event's join
        body, params = wecom.sealed(wecom.join("chat-1", "wmElsewhere", "other-state"))
        assert wecom.post(url, body, params) == (200, "success")
        with engine.connect() as conn:
            guides = dict(conn.execute(select(JOIN.c.person, JOIN.c.guide_id).where(JOIN.c.event_id == event_id)).all())
        assert guides == {"wmCustomer1": "g1", "wmCustomer2": "g2"}
        with engine.connect() as conn:  # each new member's welcome planned once, as a WeCom customer
            welcomes = conn.execute(select(SEND.c.member_id, SEND.c.channel).where(SEND.c.event_id == event_id, SEND.c.step_id == "welcome")
                                    .order_by(SEND.c.member_id)).all()
        assert [tuple(w) for w in welcomes] == [("wmCustomer1", "wecom_customer"), ("wmCustomer2", "wecom_customer")]
    finally:
        web.stop()


def test_callbacks_without_wecom_settings_are_refused(tmp_path: Path, database_url: str, redis_url: str) -> None:
    web = WebProcess({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data")})
    try:
        web.wait()
        status, answer = FakeWeCom.post(web.url + "/wecom/callback", b"<xml/>", {"timestamp": str(int(time.time()))})
        assert status == 503 and "not configured" in answer
    finally:
        web.stop()


def test_a_wrong_aes_key_setting_is_refused_at_start(make_settings: Callable[..., Settings]) -> None:
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="43-character"):
        make_settings(ORCH_WECOM_AES_KEY=base64.b64encode(b"x" * 16).decode())


def test_a_customer_tagged_with_the_opt_out_tag_gets_nothing_from_then_on(tmp_path: Path, engine: Engine, database_url: str, redis_url: str,
                                                                        wecom: FakeWeCom) -> None:
    web = WebProcess({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data"), **wecom.env()})
    try:
        web.wait()
        url = web.url + "/wecom/callback"
        body, params = wecom.sealed(wecom.tag("wmTagged1", "VIP"))  # another tag: nothing
        assert wecom.post(url, body, params) == (200, "success")
        body, params = wecom.sealed(wecom.tag("wmTagged1", "退订", userid="wangwu"))  # a second guide of theirs tags them 退订
        assert wecom.post(url, body, params) == (200, "success")
        assert wecom.post(url, body, params) == (200, "success"), "WeCom's retry: answered, looked up no more"
        wecom.fail_next["externalcontact/get"] = [-1, -1, -1]  # WeCom busy: we answer 503 so that WeCom calls back again
        body, params = wecom.sealed(wecom.tag("wmTagged2", "退订"))
        assert wecom.post(url, body, params)[0] == 503
    finally:
        web.stop()
    assert wecom.calls["externalcontact/get"] == 5, "asked once per new callback (the busy one three times)"
    assert [b["external_userid"] for b in wecom.bodies["externalcontact/get"]] == ["wmTagged1", "wmTagged1"]
    with engine.connect() as conn:
        rows = conn.execute(select(OPTOUT.c.member_id, OPTOUT.c.address, OPTOUT.c.channel, OPTOUT.c.source)).all()
    assert [tuple(r) for r in rows] == [(None, "wmtagged1", "*", "wecom-tag")]
    tagged = Member("m9", "客户", "all", wecom_external_userid="wmTagged1")
    other = Member("m8", "客户", "all", wecom_external_userid="wmOther")
    found = optouts_of(engine, [tagged, other])
    assert found.blocks(tagged, "wecom_customer") and found.blocks(tagged, "sms") and not found.blocks(other, "wecom_customer")
