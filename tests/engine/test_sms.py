"""The Aliyun SMS channel against a fake Aliyun on loopback: signatures (V3 and V1), whole events through a
real worker, malformed numbers, per-number limits, wrong credentials and the platform's answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from rich.console import Console
from sqlalchemy import Engine, func, insert, select, update

from orchestrator import scheduling, smsreceipts
from orchestrator.channels.aliyun_sms import (
    EMPTY_SHA256,
    AliyunSmsTransport,
    canonical_query,
    percent_encode,
    v1_request,
    v1_signature,
    v3_authorization,
    v3_request,
)
from orchestrator.channels.base import Outgoing
from orchestrator.settings import Settings
from orchestrator.store import Member as MemberRow
from orchestrator.store import OptOut, SmsReceipt
from orchestrator.table import print_status
from tests.engine.conftest import arq_pool, running_worker, until
from tests.engine.eventfiles import EventFiles, Person, crowd
from orchestrator.fakes.aliyun_sms import ACCESS_KEY_ID, ACCESS_KEY_SECRET, FakeAliyunSms, RunningAliyunSms, Template
from tests.engine.test_event_run import JUST_BEFORE, closed, sends
from tests.engine.test_pool import WebProcess

MEMBER = MemberRow.__table__  # type: ignore[attr-defined]
OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
RECEIPT = SmsReceipt.__table__  # type: ignore[attr-defined]
ROUTES = "email=console"  # the e-mail part of the test playbooks goes to the console log


@pytest.fixture
def fake() -> Iterator[FakeAliyunSms]:
    with RunningAliyunSms() as f:
        yield f


async def run_event(engine: Engine, settings: Settings, redis_url: str, path: Path, *, edit: Callable[[str], None] | None = None,
                    speed: float = 3600, timeout: float = 90, worker_settings: Settings | None = None, **kw: Any) -> str:
    """Schedule, let `edit` change the store before any step runs, then run one worker (with `worker_settings`,
    if given) until the event closes."""
    async with arq_pool(redis_url) as pool:
        result = await scheduling.schedule(engine, pool, settings, path, speed=speed, **kw)
    if edit is not None:
        edit(result.event_id)
    async with running_worker(worker_settings or settings, redis_url, engine):
        await until(closed(engine, result.event_id), timeout, f"event {result.event_id} to close")
    return result.event_id


def message(phone: str, *, name: str = "顾客", member: str = "m1", step: str = "reminder:hour", template: str = "SMS_100001",
            sign: str = "测试品牌") -> Outgoing:
    params = {"name": name}
    return Outgoing(f"ev:{step}:{member}:sms", "ev", step, member, "sms", name, f"【{sign}】{name}，直播即将开始，回复TD退订",
                    {"phone": phone}, extra={"sms_template": template, "sms_params": params, "sms_sign": sign})


def transport(fake: FakeAliyunSms, **kw: Any) -> AliyunSmsTransport:
    return AliyunSmsTransport(fake.url, kw.pop("key_id", fake.access_key_id), kw.pop("secret", fake.secret), **kw)


async def send_all(t: AliyunSmsTransport, messages: list[Outgoing]) -> list[Any]:
    try:
        return await t.send_batch(messages)
    finally:
        await t.close()


# --- signatures -------------------------------------------------------------------------------------

def test_v3_signature_matches_aliyuns_documented_example() -> None:
    """The worked example of Aliyun's "V3 request syntax and signature" page (RunInstances, secret YourAccessKeySecret)."""
    headers = {"host": "ecs.cn-shanghai.aliyuncs.com", "x-acs-action": "RunInstances", "x-acs-version": "2014-05-26",
               "x-acs-date": "2023-10-26T10:22:32Z", "x-acs-signature-nonce": "3156853299f313e23d1673dc12e1703d",
               "x-acs-content-sha256": EMPTY_SHA256}
    query = {"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"}
    assert v3_authorization("YourAccessKeyId", "YourAccessKeySecret", "POST", "/", query, headers) == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;"
        "x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0")


def test_v1_signature_matches_aliyuns_documented_example() -> None:
    """The DescribeRegions example of Aliyun's RPC signature page (secret testsecret)."""
    params = {"AccessKeyId": "testid", "Action": "DescribeRegions", "Format": "XML", "SignatureMethod": "HMAC-SHA1",
              "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "SignatureVersion": "1.0",
              "Timestamp": "2016-02-23T12:46:24Z", "Version": "2014-05-26"}
    assert v1_signature("testsecret", "GET", params) == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="


def test_a_sendsms_v3_request_is_signed_as_the_spec_says() -> None:
    """A SendSms call with Chinese, JSON and spaces, its canonical request written out by hand from the spec."""
    from yarl import URL

    params = {"PhoneNumbers": "13800138000", "SignName": "测试品牌", "TemplateCode": "SMS_100001", "TemplateParam": '{"name":"张 三*"}'}
    method, url, headers = v3_request(URL("https://dysmsapi.aliyuncs.com/"), "AKID", "s3cret", params, moment=1796065408.0, nonce="abc123")
    query = ("PhoneNumbers=13800138000&SignName=%E6%B5%8B%E8%AF%95%E5%93%81%E7%89%8C&TemplateCode=SMS_100001"
             "&TemplateParam=%7B%22name%22%3A%22%E5%BC%A0%20%E4%B8%89%2A%22%7D")
    canonical_request = ("POST\n/\n" + query + "\n"
                         "host:dysmsapi.aliyuncs.com\n"
                         "x-acs-action:SendSms\n"
                         "x-acs-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
                         "x-acs-date:2026-11-30T19:03:28Z\n"
                         "x-acs-signature-nonce:abc123\n"
                         "x-acs-version:2017-05-25\n"
                         "\n"
                         "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n"
                         "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
    signature = hmac.new(b"s3cret", string_to_sign.encode(), hashlib.sha256).hexdigest()
    assert method == "POST" and str(url) == "https://dysmsapi.aliyuncs.com/?" + query
    assert headers["x-acs-date"] == "2026-11-30T19:03:28Z"
    assert headers["Authorization"] == ("ACS3-HMAC-SHA256 Credential=AKID,SignedHeaders=host;x-acs-action;x-acs-content-sha256;"
                                        f"x-acs-date;x-acs-signature-nonce;x-acs-version,Signature={signature}")


def test_a_sendsms_v1_request_is_signed_as_the_spec_says() -> None:
    from yarl import URL

    params = {"PhoneNumbers": "13800138000", "SignName": "测试品牌", "TemplateCode": "SMS_100001", "TemplateParam": '{"name":"张 三*"}'}
    method, url, _headers = v1_request(URL("https://dysmsapi.aliyuncs.com/"), "AKID", "s3cret", params, moment=1796065408.0, nonce="abc123")
    string_to_sign = ("GET&%2F&AccessKeyId%3DAKID%26Action%3DSendSms%26Format%3DJSON%26PhoneNumbers%3D13800138000%26RegionId%3Dcn-hangzhou"
                      "%26SignName%3D%25E6%25B5%258B%25E8%25AF%2595%25E5%2593%2581%25E7%2589%258C%26SignatureMethod%3DHMAC-SHA1"
                      "%26SignatureNonce%3Dabc123%26SignatureVersion%3D1.0%26TemplateCode%3DSMS_100001"
                      "%26TemplateParam%3D%257B%2522name%2522%253A%2522%25E5%25BC%25A0%2520%25E4%25B8%2589%252A%2522%257D"
                      "%26Timestamp%3D2026-11-30T19%253A03%253A28Z%26Version%3D2017-05-25")
    signature = base64.b64encode(hmac.new(b"s3cret&", string_to_sign.encode(), hashlib.sha1).digest()).decode()
    assert method == "GET" and url.query["Signature"] == signature
    assert str(url).endswith("&Signature=" + percent_encode(signature) + "&SignatureMethod=HMAC-SHA1&SignatureNonce=abc123"
                             "&SignatureVersion=1.0&TemplateCode=SMS_100001&TemplateParam=%7B%22name%22%3A%22%E5%BC%A0%20%E4%B8%89%2A%22%7D"
                             "&Timestamp=2026-11-30T19%3A03%3A28Z&Version=2017-05-25")


def test_percent_encoding_follows_aliyuns_rules() -> None:
    assert percent_encode("a b*c~d-_.") == "a%20b%2Ac~d-_."
    assert percent_encode("/+=&") == "%2F%2B%3D%26"
    assert canonical_query({"b": "2", "a": "é"}) == "a=%C3%A9&b=2"


@pytest.mark.parametrize("signature", ["v3", "v1"])
def test_the_fake_accepts_both_signatures_and_refuses_a_wrong_secret(fake: FakeAliyunSms, signature: str) -> None:
    good = asyncio.run(send_all(transport(fake, signature=signature), [message("13800000001", name="张 三*&=+")]))
    assert [o.state for o in good] == ["sent"] and good[0].provider_id
    assert [(a.phone, a.sign, a.template, a.params, a.signature) for a in fake.snapshot()] == [
        ("13800000001", "测试品牌", "SMS_100001", {"name": "张 三*&=+"}, signature)]
    bad = asyncio.run(send_all(transport(fake, signature=signature, secret="not-the-secret"), [message("13800000002")]))
    assert bad[0].state == "failed" and bad[0].error.startswith("configuration:")
    assert fake.answers["SignatureDoesNotMatch"] == 1 and len(fake.snapshot()) == 1


# --- whole events through a worker ---------------------------------------------------------------------

@pytest.mark.db
def test_a_whole_event_reaches_each_consenting_phone_once_per_message(tmp_path: Path, engine: Engine, redis_url: str,
                                                                     fake: FakeAliyunSms, make_settings: Callable[..., Settings]) -> None:
    people = crowd(12, sms=True)
    no_consent = [Person(f"n{i:03d}", f"未同意{i}", f"139{i:08d}", "", sms=False) for i in range(3)]
    opted_by_id = Person("o001", "退订甲", "13700000001", "", sms=True)
    opted_by_phone = Person("o002", "退订乙", "13700000002", "", sms=True)
    staff = [Person("s001", "员工甲", "13600000001", "", sms=True)]
    path = EventFiles(people=people + no_consent + [opted_by_id, opted_by_phone], staff=staff).write(tmp_path / "event")
    with engine.begin() as conn:
        conn.execute(insert(OPTOUT), [{"member_id": "o001", "address": None, "channel": "*", "source": "api", "at": datetime.now(timezone.utc)},
                                      {"member_id": None, "address": "13700000002", "channel": "sms", "source": "sms_reply",
                                       "at": datetime.now(timezone.utc)}])
    settings = make_settings(**fake.env(), ORCH_ROUTES=ROUTES)

    event_id = asyncio.run(run_event(engine, settings, redis_url, path))

    accepted = fake.snapshot()
    steps = {"preview": "SMS_100002", "reminder:hour": "SMS_100001", "reminder:soon": "SMS_100001"}
    expected = {f"{event_id}:{step}:{p.id}:sms" for step in steps for p in people}
    assert Counter(a.out_id for a in accepted) == Counter(expected), "each consenting member got each message exactly once"
    by_phone = {p.phone: p for p in people}
    for a in accepted:
        person = by_phone[a.phone]
        assert a.out_id is not None and a.out_id.endswith(f":{person.id}:sms")
        step = a.out_id[len(event_id) + 1:-len(f":{person.id}:sms")]
        assert (a.sign, a.template, a.params) == ("测试品牌", steps[step], {"name": person.name})
    nobody = {p.phone for p in no_consent + staff + [opted_by_id, opted_by_phone]}
    assert not nobody & {a.phone for a in accepted}
    rows = sends(engine, event_id)
    assert Counter(r.state for r in rows) == {"sent": 3 * len(people)}
    assert {r.transport for r in rows} == {"aliyun_sms"} and all(r.provider_id for r in rows)
    assert fake.highest_count() <= 2, "two reminders share a template: two a day per number"
    client = redis.Redis.from_url(redis_url)
    try:  # the worker counted per number, sign and template in Redis, where every worker sees the counts
        counts = {k.decode(): int(client.get(k) or 0) for k in client.scan_iter("orch:sms:n:*")}
    finally:
        client.close()
    assert len(counts) == 2 * len(people) and sorted(set(counts.values())) == [1, 2]


@pytest.mark.db
def test_delivery_receipts_aliyun_pushes_mark_each_sms_delivered_or_not(tmp_path: Path, engine: Engine, redis_url: str, database_url: str,
                                                                       fake: FakeAliyunSms, make_settings: Callable[..., Settings]) -> None:
    people = crowd(5, sms=True)
    path = EventFiles(people=people, preview=None, reminders=[("hour", "T-1h", "[sms]"), ("soon", "T-10m", "[sms]")]).write(tmp_path / "event")
    web = WebProcess({"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data"),
                      "ORCH_SMS_INBOUND_KEY": "k3y"})
    try:
        web.wait()
        fake.report_to = web.url + "/inbound/sms-report/k3y"  # the console's 回执消息 (HTTP push) setting
        fake.undeliverable = {people[2].phone: ("MK:0001", "空号")}
        event_id = asyncio.run(run_event(engine, make_settings(**fake.env(), ORCH_ROUTES=ROUTES), redis_url, path, clock_from=JUST_BEFORE))
        asyncio.run(until(lambda: sum(sum(d.values()) for d in smsreceipts.delivery(engine, event_id).values()) == 2 * len(people), 30,
                          "every SMS's receipt"))
        first = list(fake.pushes)
        pushed_again = [fake.receipt(a.biz_id, a.phone) for a in fake.snapshot()]
        again = urllib.request.urlopen(urllib.request.Request(web.url + "/inbound/sms-report/k3y", data=json.dumps(pushed_again).encode(),
                                                              headers={"Content-Type": "application/json"}), timeout=10)
        answer = json.loads(again.read())  # a push repeated changes nothing
    finally:
        web.stop()
    assert first and all(status == 200 and answer["code"] == 0 for status, answer in first), first
    assert again.status == 200 and answer["code"] == 0
    data = scheduling.status(engine, event_id)
    by_step = {s["id"]: s for s in data["steps"]}
    for step in ("reminder:hour", "reminder:soon"):
        assert by_step[step]["sends"]["sent"] == len(people), "a receipt does not change the send's own state"
        assert by_step[step]["sms_receipts"] == {"delivered": len(people) - 1, "undelivered": 1}
    assert [(u["step_id"], u["member_id"], u["code"], u["message"]) for u in data["undelivered"]] == \
        [("reminder:hour", people[2].id, "MK:0001", "空号"), ("reminder:soon", people[2].id, "MK:0001", "空号")]
    console = Console(record=True, width=200)
    print_status(data, console)
    text = console.export_text()
    assert "SMS delivered" in text and "4 of 5" in text and "2 SMS did not reach the phone" in text and "MK:0001" in text
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(RECEIPT)).scalar_one() == 2 * len(people), "kept once each"


@pytest.mark.db
def test_a_malformed_number_is_never_sent_and_its_row_says_why(tmp_path: Path, engine: Engine, redis_url: str, fake: FakeAliyunSms,
                                                              make_settings: Callable[..., Settings]) -> None:
    path = EventFiles(people=crowd(4), preview=None, reminders=[("hour", "T-1h", "[sms]")]).write(tmp_path / "event")

    def foreign_number(event_id: str) -> None:  # a number the audience files never had (an import, a hand edit)
        with engine.begin() as conn:
            conn.execute(update(MEMBER).where(MEMBER.c.event_id == event_id, MEMBER.c.member_id == "m000002").values(phone="+1 415 555 0100"))

    event_id = asyncio.run(run_event(engine, make_settings(**fake.env()), redis_url, path, edit=foreign_number, speed=3600,
                                     clock_from=JUST_BEFORE))
    rows = {r.member_id: r for r in sends(engine, event_id)}
    assert rows["m000002"].state == "failed" and "malformed phone number '+1 415 555 0100'" in rows["m000002"].error
    assert rows["m000002"].attempts == 1
    assert {rows[m].state for m in ("m000001", "m000003", "m000004")} == {"sent"}
    assert sorted(a.phone for a in fake.snapshot()) == ["13800000001", "13800000003", "13800000004"]
    assert fake.actions["SendSms"] == 3 and fake.answers["isv.MOBILE_NUMBER_ILLEGAL"] == 0


@pytest.mark.db
def test_a_wrong_secret_fails_the_rows_at_once_without_a_retry_storm(tmp_path: Path, engine: Engine, redis_url: str, fake: FakeAliyunSms,
                                                                    make_settings: Callable[..., Settings],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    people = crowd(40)
    path = EventFiles(people=people, preview=None, reminders=[("hour", "T-1h", "[sms]"), ("soon", "T-10m", "[sms]")]).write(tmp_path / "event")
    # scheduled with working credentials (schedule checks the templates with them); the worker's secret is wrong
    wrong = make_settings(**fake.env(secret="a-wrong-secret"))
    with caplog.at_level(logging.ERROR, logger="orchestrator.channels.aliyun_sms"):
        event_id = asyncio.run(run_event(engine, make_settings(**fake.env()), redis_url, path, worker_settings=wrong))
    rows = sends(engine, event_id)
    assert len(rows) == 2 * len(people) and {r.state for r in rows} == {"failed"}
    assert all(r.error.startswith("configuration:") and "ORCH_SMS_ACCESS_KEY_ID / ORCH_SMS_ACCESS_KEY_SECRET" in r.error for r in rows)
    assert {r.attempts for r in rows} == {1}, "never retried"
    asked = fake.actions["QuerySmsTemplate"] + fake.actions["QuerySmsSign"]  # by schedule, with the right secret
    assert asked == 2 and fake.total_requests() - asked == 1, "one request found the credentials wrong; no other was made"
    assert fake.answers["SignatureDoesNotMatch"] == 1 and fake.actions["SendSms"] == 0 and fake.snapshot() == []  # none got past the signature
    assert len([r for r in caplog.records if "configuration" in r.getMessage()]) == 1, "logged once"


# --- the transport against the fake ----------------------------------------------------------------------

def test_a_malformed_number_fails_without_a_request(fake: FakeAliyunSms) -> None:
    outcomes = asyncio.run(send_all(transport(fake), [message(p, member=f"m{i}") for i, p in
                                                      enumerate(["12345", "23800000000", "+8613800000009", "8613800000008", "", "1380000000a"])]))
    assert [o.state for o in outcomes] == ["failed", "failed", "sent", "sent", "failed", "failed"]
    assert all("malformed phone number" in (o.error or "") for o in outcomes if o.state == "failed")
    assert sorted(a.phone for a in fake.snapshot()) == ["13800000008", "13800000009"], "+86 and 86 are stripped"
    assert fake.total_requests() == 1, "the two good numbers share a call (same template, sign and parameters)"


def test_the_per_number_limit_is_kept_before_the_platform_counts(fake: FakeAliyunSms) -> None:
    messages = [message("13800000001", name=f"顾客{i}", member=f"m{i}") for i in range(60)]  # params differ: a call each
    outcomes = asyncio.run(send_all(transport(fake), messages))
    assert Counter(o.state for o in outcomes) == {"sent": 50, "failed": 10}
    assert {o.error for o in outcomes if o.state == "failed"} == {"per-number daily limit (50) reached"}
    assert fake.highest_count() == 50 == fake.total_requests() and fake.answers["isv.BUSINESS_LIMIT_CONTROL"] == 0
    other = asyncio.run(send_all(transport(fake), [message("13800000001", template="SMS_100002"), message("13800000002")]))
    assert [o.state for o in other] == ["sent", "sent"], "the limit is per number, sign and template"


def test_workers_sharing_redis_share_the_per_number_limit(fake: FakeAliyunSms, redis_url: str) -> None:
    async def two_workers() -> list[Any]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            a, b = transport(fake, redis=client), transport(fake, redis=client)
            first = [message("13800000001", name=f"甲{i}", member=f"a{i}") for i in range(30)]
            second = [message("13800000001", name=f"乙{i}", member=f"b{i}") for i in range(30)]
            results = await asyncio.gather(send_all(a, first), send_all(b, second))
            return results[0] + results[1]
        finally:
            await client.aclose()

    outcomes = asyncio.run(two_workers())
    assert Counter(o.state for o in outcomes) == {"sent": 50, "failed": 10}
    assert fake.highest_count() == 50 and fake.answers["isv.BUSINESS_LIMIT_CONTROL"] == 0


def test_a_place_not_used_is_given_back(fake: FakeAliyunSms) -> None:
    fake.fail_next = [("ServiceUnavailable", 503)]
    t = transport(fake, daily_limit=1)
    first = asyncio.run(send_all(t, [message("13800000001")]))
    again = asyncio.run(send_all(t, [message("13800000001")]))
    assert first[0].state == "retry" and again[0].state == "sent"


def test_equal_messages_share_one_call_of_up_to_1000_numbers(fake: FakeAliyunSms) -> None:
    same = [message(f"138{i:08d}", name="各位", member=f"m{i}") for i in range(1500)]
    different = [message("13900000001", name="甲", member="x1"), message("13900000002", name="乙", member="x2")]
    outcomes = asyncio.run(send_all(transport(fake), same + different))
    assert {o.state for o in outcomes} == {"sent"}
    assert fake.total_requests() == 4, "1,000 + 500 numbers with one TemplateParam, then one call per different message"
    assert len({o.provider_id for o in outcomes[:1000]}) == 1 and outcomes[0].provider_id != outcomes[1000].provider_id
    accepted = fake.snapshot()
    assert len(accepted) == 1502 and len({a.phone for a in accepted}) == 1502
    assert {a.out_id for a in accepted if a.phone.startswith("139")} == {"ev:reminder:hour:x1:sms", "ev:reminder:hour:x2:sms"}


def test_a_per_number_refusal_inside_a_shared_call_is_retried_number_by_number(fake: FakeAliyunSms) -> None:
    fake.daily_limit = 1
    asyncio.run(send_all(transport(fake), [message("13800000002", name="各位", member="before")]))  # the platform's count is full
    outcomes = asyncio.run(send_all(transport(fake), [message(f"1380000000{i}", name="各位", member=f"m{i}") for i in (1, 2, 3)]))
    assert [o.state for o in outcomes] == ["sent", "retry", "sent"]
    assert outcomes[1].retry_after == 3600 and "isv.BUSINESS_LIMIT_CONTROL" in (outcomes[1].error or "")


@pytest.mark.parametrize(("code", "status", "state", "words"), [
    ("isv.BUSINESS_LIMIT_CONTROL", 200, "retry", "isv.BUSINESS_LIMIT_CONTROL"),
    ("isv.AMOUNT_NOT_ENOUGH", 200, "failed", "out of credit"),
    ("isv.TEMPLATE_MISSING_PARAMETERS", 200, "failed", "isv.TEMPLATE_MISSING_PARAMETERS: injected by the test"),
    ("isv.SMS_SIGNATURE_ILLEGAL", 200, "failed", "isv.SMS_SIGNATURE_ILLEGAL"),
    ("isv.SOMETHING_NEW", 200, "failed", "isv.SOMETHING_NEW"),
    ("Throttling.User", 400, "retry", "Throttling.User"),
    ("ServiceUnavailable", 503, "retry", "ServiceUnavailable"),
    ("InternalError", 500, "retry", "InternalError"),
    ("Forbidden.RAM", 403, "failed", "configuration: Aliyun answered Forbidden.RAM (the RAM user needs dysms:SendSms"),
])
def test_each_answer_of_the_platform_becomes_its_outcome(fake: FakeAliyunSms, code: str, status: int, state: str, words: str) -> None:
    fake.fail_next = [(code, status)]
    t = transport(fake)
    outcome = asyncio.run(send_all(t, [message("13800000001")]))[0]
    assert outcome.state == state and words in (outcome.error or "")
    assert (outcome.retry_after == 3600) == (code == "isv.BUSINESS_LIMIT_CONTROL")
    after = asyncio.run(send_all(t, [message("13800000002")]))[0]
    assert after.state == ("failed" if code == "Forbidden.RAM" else "sent"), "only a configuration error stops the transport"
    assert fake.total_requests() == 2 - (code == "Forbidden.RAM")


def test_an_unknown_access_key_is_a_configuration_error(fake: FakeAliyunSms) -> None:
    outcomes = asyncio.run(send_all(transport(fake, key_id="LTAI-no-such-key"), [message(f"1380000000{i}", name=f"顾客{i}") for i in range(5)]))
    assert {o.state for o in outcomes} == {"failed"} and all("InvalidAccessKeyId.NotFound" in (o.error or "") for o in outcomes)
    assert fake.total_requests() == 1


def test_a_platform_that_cannot_be_reached_is_retried() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t = AliyunSmsTransport(f"http://127.0.0.1:{port}/", ACCESS_KEY_ID, ACCESS_KEY_SECRET)
    outcome = asyncio.run(send_all(t, [message("13800000001")]))[0]
    assert outcome.state == "retry" and "Connect" in (outcome.error or "")


def test_a_lost_answer_is_never_repeated(fake: FakeAliyunSms) -> None:
    """The request reached the platform but its answer did not come back: the SMS may have gone out."""
    fake.hang = 1.0
    outcome = asyncio.run(send_all(transport(fake, timeout=0.2), [message("13800000001")]))[0]
    assert outcome.state == "unknown" and outcome.error is not None and outcome.error.startswith("outcome unknown")


def test_a_message_without_an_approved_template_is_refused(fake: FakeAliyunSms) -> None:
    plain = Outgoing("ev:poster:g1:sms", "ev", "poster", "g1", "sms", "小李", "海报链接 https://example.com/p/1", {"phone": "13800000001"})
    outcome = asyncio.run(send_all(transport(fake), [plain]))[0]
    assert outcome.state == "failed" and "no SMS template" in (outcome.error or "") and fake.total_requests() == 0


def test_the_transport_is_built_from_settings_and_is_not_idempotent(fake: FakeAliyunSms, make_settings: Callable[..., Settings]) -> None:
    from orchestrator.channels.registry import build_transports

    t = build_transports(make_settings(**fake.env(signature="v1")))["aliyun_sms"]
    assert isinstance(t, AliyunSmsTransport) and t.name == "aliyun_sms" and t.idempotent is False and t.signature == "v1"
    assert t.access_key_id == ACCESS_KEY_ID


# --- templates and signs checked on the account before anything is sent ---------------------------------

ACCOUNT = {"SMS_100001": Template("${name}，直播即将开始，回复TD退订", type=1), "SMS_100002": Template("${name}，直播预告，回复TD退订", type=1)}


@pytest.fixture
def account() -> Iterator[FakeAliyunSms]:
    """An Aliyun account that has exactly the test playbooks' templates and sign, approved."""
    with RunningAliyunSms(FakeAliyunSms(templates=dict(ACCOUNT), signs={"测试品牌": 1})) as f:
        yield f


def validate_with(fake: FakeAliyunSms, tmp_path: Path, *args: str) -> Any:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    return CliRunner().invoke(cli, ["--lang", "en", "validate", *args], env={**fake.env(), "ORCH_DATA_DIR": str(tmp_path / "data")})


def at_line(path: Path, needle: str, nth: int = 0) -> str:
    """`file:line:` of the nth line of the playbook that holds `needle`."""
    lines = [i for i, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if needle in text]
    return f"{path}:{lines[nth]}:"


def test_a_playbook_whose_templates_the_account_has_is_valid_and_each_is_asked_once(tmp_path: Path, account: FakeAliyunSms) -> None:
    path = EventFiles(people=crowd(2)).write(tmp_path / "event")
    result = validate_with(account, tmp_path, str(path))
    assert result.exit_code == 0, result.output
    assert account.total_requests() == 3, "two templates and one sign, each asked once (two reminders share a template)"


def test_validate_names_an_unknown_template_and_one_under_review_at_their_lines(tmp_path: Path, account: FakeAliyunSms) -> None:
    assert account.templates is not None
    del account.templates["SMS_100002"]
    account.templates["SMS_100001"] = Template(ACCOUNT["SMS_100001"].content, type=1, status=0)
    path = EventFiles(people=crowd(2)).write(tmp_path / "event")
    result = validate_with(account, tmp_path, str(path))
    assert result.exit_code == 1
    assert f"{at_line(path, 'SMS_100002')}" in result.output and "no usable template SMS_100002" in result.output
    assert "isv.SMS_TEMPLATE_ILLEGAL" in result.output
    for nth in (0, 1):  # both reminders use the template under review: each is named at its own line
        assert at_line(path, "SMS_100001", nth) in result.output
    assert "SMS_100001 is 审核中 (under review)" in result.output


def test_validate_names_a_text_that_is_not_the_approved_one_and_an_unmarked_marketing_template(tmp_path: Path, account: FakeAliyunSms) -> None:
    assert account.templates is not None
    account.templates["SMS_100001"] = Template("${name}，今晚八点直播，回复TD退订", type=1)
    path = EventFiles(people=crowd(2)).write(tmp_path / "event")
    path.write_text(path.read_text(encoding="utf-8").replace("template_code: SMS_100002,", "template_code: SMS_100002, marketing: false,"),
                    encoding="utf-8")
    result = validate_with(account, tmp_path, str(path))
    assert result.exit_code == 1
    assert "is not template SMS_100001's approved text: ${name}，今晚八点直播，回复TD退订" in result.output
    assert f"{at_line(path, 'SMS_100002')}" in result.output and "SMS_100002 is a marketing template (推广短信) on Aliyun" in result.output


def test_validate_names_an_unknown_sign_and_one_not_approved(tmp_path: Path, account: FakeAliyunSms) -> None:
    account.signs = {"测试品牌": 0}
    path = EventFiles(people=crowd(2)).write(tmp_path / "event")
    result = validate_with(account, tmp_path, str(path))
    assert result.exit_code == 1 and "sign '测试品牌' is not approved yet" in result.output
    account.signs = {}
    result = validate_with(account, tmp_path, str(path))
    assert result.exit_code == 1 and "Aliyun has no sign '测试品牌' on this account (isv.SMS_SIGNATURE_ILLEGAL" in result.output


def test_validate_offline_asks_nobody(tmp_path: Path, account: FakeAliyunSms) -> None:
    assert account.templates is not None
    account.templates.clear()
    path = EventFiles(people=crowd(2)).write(tmp_path / "event")
    assert validate_with(account, tmp_path, "--offline", str(path)).exit_code == 0
    assert account.total_requests() == 0


def test_wrong_credentials_make_validate_a_configuration_error_after_one_request(tmp_path: Path, account: FakeAliyunSms) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.errors import ConfigError

    path = EventFiles(people=crowd(2)).write(tmp_path / "event")
    result = CliRunner().invoke(cli, ["--lang", "en", "validate", str(path)], env={**account.env(secret="wrong"), "ORCH_DATA_DIR": str(tmp_path)})
    assert isinstance(result.exception, ConfigError) and "SignatureDoesNotMatch" in str(result.exception)
    assert "ORCH_SMS_ACCESS_KEY_SECRET" in str(result.exception)


def test_an_aliyun_that_does_not_answer_is_an_error_not_a_pass(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    import socket

    from orchestrator import smstemplates
    from orchestrator.validate import check

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    path = EventFiles(people=crowd(2)).write(tmp_path / "event")
    loaded, _diags = check(path)
    assert loaded is not None
    settings = make_settings(ORCH_SMS_API=f"http://127.0.0.1:{port}/", ORCH_SMS_ACCESS_KEY_ID=ACCESS_KEY_ID, ORCH_SMS_ACCESS_KEY_SECRET="x")
    found = asyncio.run(smstemplates.check(settings, loaded))
    assert [d.code for d in found] == ["sms-unchecked"] and found[0].is_error and f"127.0.0.1:{port}" in found[0].message


@pytest.mark.db
def test_schedule_refuses_a_template_the_account_lacks_and_stores_nothing(tmp_path: Path, engine: Engine, redis_url: str,
                                                                          account: FakeAliyunSms, make_settings: Callable[..., Settings]) -> None:
    from orchestrator.errors import PlaybookError, UnknownEvent

    assert account.templates is not None
    del account.templates["SMS_100002"]
    path = EventFiles(people=crowd(2)).write(tmp_path / "event")

    async def go() -> None:
        async with arq_pool(redis_url) as pool:
            await scheduling.schedule(engine, pool, make_settings(**account.env(), ORCH_ROUTES=ROUTES), path)

    with pytest.raises(PlaybookError) as refused:
        asyncio.run(go())
    assert [d.code for d in refused.value.diagnostics] == ["sms-template-unknown"]
    assert str(refused.value).startswith(at_line(path, "SMS_100002"))
    with pytest.raises(UnknownEvent):
        scheduling.get_event(engine, "engine-test")
    assert not [a for a in account.snapshot()], "nothing was sent"
