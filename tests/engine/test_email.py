"""The e-mail channel (SMTP) against a real SMTP server on loopback: whole events through a real worker,
one-click unsubscribe links through the web app, temporary and permanent refusals, bad addresses and
a wrong password."""

from __future__ import annotations

import asyncio
import email
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.policy import compat32
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import Engine, func, insert, select
from starlette.testclient import TestClient

from orchestrator import scheduling, unsubscribe
from orchestrator.channels.base import Outgoing
from orchestrator.channels.smtp import SmtpTransport, valid_address
from orchestrator.settings import Settings
from orchestrator.store import OptOut
from tests.engine.conftest import arq_pool, running_worker, until
from tests.engine.eventfiles import EventFiles, Person, crowd
from orchestrator.fakes.smtp import FakeSmtp
from tests.engine.test_event_run import JUST_BEFORE, closed, run_event, sends, step_states
from web.app import create_app

OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
SECRET = "link-secret-for-tests"
FROM = "测试品牌 <live@brand.example>"
PUBLIC = "https://live.brand.example"
TWO_REMINDERS = [("hour", "T-1h", "[email]"), ("soon", "T-10m", "[email]")]


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    with FakeSmtp(user="live@brand.example", password="right-password") as fake:
        yield fake


def mail_settings(make_settings: Callable[..., Settings], fake: FakeSmtp, redis_url: str, password: str = "right-password",
                  **extra: str) -> Settings:
    return make_settings(**fake.settings(), ORCH_SMTP_PASSWORD=password, ORCH_MAIL_FROM=FROM, ORCH_LINK_SECRET=SECRET,
                         ORCH_PUBLIC_URL=PUBLIC, REDIS_URL=redis_url, **extra)


def optouts(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(OPTOUT)).all())


def link_path(message: Any) -> str:
    """The path of the List-Unsubscribe URL of a received message."""
    header = str(message["List-Unsubscribe"])
    assert header.startswith("<") and header.endswith(">"), header
    url = header[1:-1]
    assert url.startswith(PUBLIC + "/u/"), url
    return urlsplit(url).path


@pytest.mark.db
def test_a_whole_event_reminds_by_email_once_each_with_unsubscribe_headers(
        tmp_path: Path, engine: Engine, redis_url: str, smtp: FakeSmtp, make_settings: Callable[..., Settings]) -> None:
    people = crowd(6, sms=False, mail=True)
    no_consent = Person("n001", "未同意", "", "n1@example.com", sms=False, mail=False)
    opted = Person("o001", "退订甲", "", "o1@example.com", sms=False, mail=True)
    path = EventFiles(people=[*people, no_consent, opted], preview=None, reminders=TWO_REMINDERS).write(tmp_path / "event")
    with engine.begin() as conn:
        conn.execute(insert(OPTOUT), [{"member_id": None, "address": "o1@example.com", "channel": "email", "source": "api",
                                       "at": datetime.now(timezone.utc)}])
    event_id = asyncio.run(run_event(engine, mail_settings(make_settings, smtp, redis_url), redis_url, path))

    received = smtp.received()
    assert Counter(r.recipient for r in received) == {p.email: 2 for p in people}, "each reminder exactly once to each consenting member"
    rows = sends(engine, event_id)
    assert Counter((r.step_id, r.state) for r in rows) == {("reminder:hour", "sent"): 6, ("reminder:soon", "sent"): 6}
    assert {r.provider_id for r in rows} == {str(r.message["Message-ID"]) for r in received}, "the ledger keeps each Message-ID"
    by_address = {p.email: p for p in people}
    for r in received:
        person = by_address[r.recipient]
        m = r.message
        assert r.sender == "live@brand.example"
        assert m["Subject"] == "引擎测试直播 提醒"
        assert m["From"].addresses[0].display_name == "测试品牌" and m["From"].addresses[0].addr_spec == "live@brand.example"
        assert m["To"].addresses[0].display_name == person.name and m["To"].addresses[0].addr_spec == person.email
        assert m["Date"] is not None and m.get_content_type() == "multipart/alternative"
        assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = link_path(m).removeprefix("/u/")
        assert unsubscribe.read_token(SECRET, token) == (person.id, person.email, "email")
        assert r.text.startswith(f"{person.name}，引擎测试直播 即将开始 https://channels.weixin.qq.com/live/engine-test")
        assert f"退订 / unsubscribe: {PUBLIC}/u/{token}" in r.text
        assert f"<p>{person.name}，引擎测试直播 即将开始" in r.html and f'href="{PUBLIC}/u/{token}"' in r.html and "退订 / unsubscribe" in r.html
    assert not smtp.to("n1@example.com") and not smtp.to("o1@example.com"), "nothing to people without consent or opted out"
    assert all(login for _user, login in smtp.logins), "the right password logs in"
    assert smtp.sessions <= len(people) < len(received), "connections are kept and reused across messages and steps"
    note = step_states(engine, event_id)["reminder:hour"].note
    assert "1 no consent" in note and "1 opted out" in note


@pytest.mark.db
def test_an_unsubscribe_link_takes_effect_before_the_next_send(
        tmp_path: Path, engine: Engine, redis_url: str, smtp: FakeSmtp, make_settings: Callable[..., Settings]) -> None:
    people = crowd(3, sms=False, mail=True)
    files = EventFiles(people=people, preview=None, reminders=[("hour", "T-1h", "[email]"), ("soon", "T-50m", "[email]")],
                       live_end="2027-06-10 19:10", draws="")
    path = files.write(tmp_path / "event")
    settings = mail_settings(make_settings, smtp, redis_url)
    one, two = people[0].email, people[1].email

    async def scenario(web: TestClient) -> str:
        async with arq_pool(redis_url) as pool:  # one real second is five event minutes: "soon" comes ~2 s after "hour"
            event_id = (await scheduling.schedule(engine, pool, settings, path, speed=300, clock_from=JUST_BEFORE)).event_id
        async with running_worker(settings, redis_url, engine):
            await until(lambda: step_states(engine, event_id)["reminder:hour"].state == "done", what="the first reminder")
            smtp.temporary[two] = 3  # the second reminder will find the second person's mailbox busy for a while

            # the first person follows the link: the page asks, the one-click POST (a mail provider's, no cookies) records
            first_link = link_path(smtp.to(one)[0].message)
            shown = await asyncio.to_thread(web.get, first_link)
            assert shown.status_code == 200 and "确认退订" in shown.text and 'method="post"' in shown.text
            assert optouts(engine) == [], "opening the link records nothing"
            done = await asyncio.to_thread(web.post, first_link, content=b"List-Unsubscribe=One-Click",
                                           headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert done.status_code == 200 and "已退订" in done.text

            # the second person unsubscribes while their second reminder waits for a retry
            await until(lambda: smtp.rcpt_replies[(two, 451)] >= 1, what="the busy mailbox's first refusal")
            pressed = await asyncio.to_thread(web.post, link_path(smtp.to(two)[0].message))
            assert pressed.status_code == 200 and "已退订" in pressed.text
            await until(closed(engine, event_id), 90, "the event to close")
        return event_id

    with TestClient(create_app(settings)) as web:
        event_id = asyncio.run(scenario(web))

    recorded = {(o.member_id, o.address, o.channel, o.source) for o in optouts(engine)}
    assert recorded == {(people[0].id, one, "email", "email-link"), (people[1].id, two, "email", "email-link")}
    rows = {(r.step_id, r.member_id): r for r in sends(engine, event_id)}
    assert len(smtp.to(one)) == 1 and ("reminder:soon", people[0].id) not in rows, "opted out before the step: not planned"
    assert "1 opted out" in step_states(engine, event_id)["reminder:soon"].note
    skipped = rows[("reminder:soon", people[1].id)]
    assert skipped.state == "skipped" and skipped.error == "opted out", "opted out between two tries: the next try skips"
    assert len(smtp.to(two)) == 1, "only the first reminder reached the second person"
    assert len(smtp.to(people[2].email)) == 2 and rows[("reminder:soon", people[2].id)].state == "sent"


@pytest.mark.db
def test_temporary_refusals_retry_permanent_ones_fail_and_bad_addresses_never_reach_the_server(
        tmp_path: Path, engine: Engine, redis_url: str, smtp: FakeSmtp, make_settings: Callable[..., Settings]) -> None:
    people = crowd(4, sms=False, mail=True)
    people[2].email = "c3@bad_domain.example"  # the playbook's loose check lets it through; RFC 5321 does not
    busy, gone = people[0].email, people[1].email
    smtp.temporary[busy] = 2
    smtp.permanent[gone] = "550 5.1.1 <c2@example.com>: Recipient address rejected: User unknown"
    path = EventFiles(people=people, preview=None, reminders=[("hour", "T-1h", "[email]")]).write(tmp_path / "event")
    event_id = asyncio.run(run_event(engine, mail_settings(make_settings, smtp, redis_url), redis_url, path,
                                     speed=900, clock_from=JUST_BEFORE))  # backoff 2 s + 4 s fits before the close
    by_member = {r.member_id: r for r in sends(engine, event_id)}
    assert by_member[people[0].id].state == "sent" and by_member[people[0].id].attempts == 3
    assert smtp.rcpt_replies[(busy, 451)] == 2 and len(smtp.to(busy)) == 1, "retried, then delivered once"
    failed = by_member[people[1].id]
    assert failed.state == "failed" and failed.attempts == 1 and failed.error.startswith("SMTP 550") and "User unknown" in failed.error
    assert not smtp.to(gone)
    bad = by_member[people[2].id]
    assert bad.state == "failed" and "malformed e-mail address" in bad.error
    assert not any(address == "c3@bad_domain.example" for address, _code in smtp.rcpt_replies), "never sent to the server"
    assert by_member[people[3].id].state == "sent" and len(smtp.to(people[3].email)) == 1


@pytest.mark.db
def test_a_wrong_password_fails_clearly_without_a_login_per_member(
        tmp_path: Path, engine: Engine, redis_url: str, smtp: FakeSmtp, make_settings: Callable[..., Settings],
        caplog: pytest.LogCaptureFixture) -> None:
    people = crowd(40, sms=False, mail=True)
    path = EventFiles(people=people, preview=None, reminders=TWO_REMINDERS).write(tmp_path / "event")
    settings = mail_settings(make_settings, smtp, redis_url, password="wrong-password")
    with caplog.at_level(logging.ERROR, logger="orchestrator.channels.smtp"):
        event_id = asyncio.run(run_event(engine, settings, redis_url, path, clock_from=JUST_BEFORE))
    rows = sends(engine, event_id)
    assert len(rows) == 80 and {r.state for r in rows} == {"failed"}
    assert {r.error for r in rows} == {"configuration: the SMTP server refused the login; check ORCH_SMTP_USER / ORCH_SMTP_PASSWORD"
                                       " (server: 535 5.7.8 Authentication credentials invalid)"}
    assert {r.attempts for r in rows} == {1}, "a configuration error is not retried"
    assert 1 <= len(smtp.logins) <= 3 and not any(ok for _user, ok in smtp.logins), "one login (two mechanisms), not one per member"
    assert smtp.received() == []
    assert len([r for r in caplog.records if "refused the login" in r.getMessage()]) == 1, "logged once"


@pytest.mark.db
def test_tampered_or_unknown_links_are_refused_and_store_nothing(
        engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    token = unsubscribe.link_token(SECRET, "m000001", "c1@example.com")
    body, signature = token.split(".")
    other = unsubscribe.link_token(SECRET, "m000002", "c2@example.com")
    bad = [
        body + "." + signature[:-2] + ("AA" if not signature.endswith("AA") else "BB"),  # signature changed
        other.split(".")[0] + "." + signature,  # someone else's payload with this signature
        unsubscribe.link_token("another-secret", "m000001", "c1@example.com"),  # signed with another key
        body,  # no signature
        token + ".x",
        "%E2%9C%93." + signature,  # not base64
    ]
    settings = make_settings(ORCH_LINK_SECRET=SECRET, REDIS_URL=redis_url)
    with TestClient(create_app(settings)) as web:
        for t in bad:
            for method in (web.get, web.post):
                r = method(f"/u/{t}")
                assert r.status_code == 404 and "退订链接无效" in r.text, (t, method)
        assert optouts(engine) == []
        ok = web.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"})
        again = web.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert ok.status_code == again.status_code == 200 and ok.headers["cache-control"] == "no-store"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(OPTOUT)).scalar_one() == 1, "the same link twice records once"
    without = make_settings(REDIS_URL=redis_url)
    with TestClient(create_app(without)) as web:
        r = web.post(f"/u/{token}")
        assert r.status_code == 503 and "ORCH_LINK_SECRET" in r.text


def test_tokens_and_addresses() -> None:
    token = unsubscribe.link_token(SECRET, "会员-7", "Ann.Lee+live@Example.com")
    assert unsubscribe.read_token(SECRET, token) == ("会员-7", "Ann.Lee+live@Example.com", "email")
    assert unsubscribe.link_token(SECRET, "会员-7", "Ann.Lee+live@Example.com") == token, "no expiry, no randomness: a link keeps working"
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."), "URL-safe"
    assert unsubscribe.url("https://a.example/", token) == f"https://a.example/u/{token}"
    for good in ("c1@example.com", "First.Last+tag@sub.example.co", "张三@公司.中国"):
        assert valid_address(good), good
    for bad in ("", "c1", "c1@example", "a b@example.com", "a..b@example.com", ".a@example.com", "<a@example.com>", "a@b@example.com",
                "c3@bad_domain.example", "a@-example.com", "x" * 250 + "@example.com"):
        assert not valid_address(bad), bad


def test_the_message_carries_html_copy_and_a_chinese_name_across_lines(smtp: FakeSmtp) -> None:
    transport = SmtpTransport(smtp.host, smtp.port, FROM, SECRET, PUBLIC, user=smtp.user, password=smtp.password, tls="off", concurrency=2)
    long_name = "欧阳" + "非常长的名字" * 8
    html = "<html><body><h1>今晚八点</h1><p>不见不散</p></body></html>"
    messages = [Outgoing("e:s:m1:email", "e", "s", "m1", "email", long_name, "今晚八点开播", {"email": "c1@example.com"}, "今晚 " * 30, html),
                Outgoing("e:s:m2:email", "e", "s", "m2", "email", 'Lee, "Ann"', "plain", {"email": "c2@example.com"}, "Tonight")]

    async def send() -> list[Any]:
        try:
            return await transport.send_batch(messages)
        finally:
            await transport.close()

    assert [o.state for o in asyncio.run(send())] == ["sent", "sent"]
    first, second = smtp.to("c1@example.com")[0], smtp.to("c2@example.com")[0]
    raw_to = email.message_from_bytes(first.raw, policy=compat32)["To"]  # adjacent encoded words join without a space (RFC 2047 6.2),
    assert str(make_header(decode_header(raw_to))) == f"{long_name} <c1@example.com>"  # which the stdlib's new parser gets wrong
    assert first.message["Subject"] == " ".join(["今晚"] * 30)
    assert first.html.startswith("<html><body><h1>今晚八点</h1><p>不见不散</p>") and first.html.rstrip().endswith("</body></html>")
    assert "退订 / unsubscribe" in first.html and first.text.startswith("今晚八点开播")
    assert second.message["To"].addresses[0].display_name == 'Lee, "Ann"' and second.message["Subject"] == "Tonight"
    assert all(len(line) <= 998 for line in first.raw.split(b"\r\n")), "no header line over the SMTP limit"


def _messages(n: int, start: int = 1) -> list[Outgoing]:
    return [Outgoing(f"e:s:m{i}:email", "e", "s", f"m{i}", "email", f"顾客{i}", f"顾客{i}，今晚八点开播", {"email": f"c{i}@example.com"}, "提醒")
            for i in range(start, start + n)]


def test_a_connection_the_server_closes_is_replaced_and_nothing_is_lost_or_doubled(smtp: FakeSmtp) -> None:
    smtp.per_connection = 2  # then "421 too many messages" and the server hangs up
    transport = SmtpTransport(smtp.host, smtp.port, FROM, SECRET, PUBLIC, user=smtp.user, password=smtp.password, tls="off", concurrency=1)

    async def send() -> list[Any]:
        try:
            return [*await transport.send_batch(_messages(5)), *await transport.send_batch(_messages(2, start=6))]
        finally:
            await transport.close()

    assert [o.state for o in asyncio.run(send())] == ["sent"] * 7
    assert Counter(r.recipient for r in smtp.received()) == {f"c{i}@example.com": 1 for i in range(1, 8)}
    assert smtp.sessions == 4, "two messages a connection: four connections, each opened when the last was closed"


def test_a_connection_lost_while_the_server_takes_the_message_is_an_unknown_outcome_not_a_retry(smtp: FakeSmtp) -> None:
    smtp.vanish = {"c2@example.com"}
    transport = SmtpTransport(smtp.host, smtp.port, FROM, SECRET, PUBLIC, user=smtp.user, password=smtp.password, tls="off", concurrency=1)

    async def send() -> list[Any]:
        try:
            return await transport.send_batch(_messages(3))
        finally:
            await transport.close()

    first, lost, third = asyncio.run(send())
    assert first.state == third.state == "sent"
    assert lost.state == "unknown" and lost.error.startswith("outcome unknown") and "not sent again" in lost.error
    assert smtp.vanished == 1, "the message reached the server once and was not sent again"
