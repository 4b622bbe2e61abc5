"""A whole accelerated event, from schedule to close, on a real database, Redis, worker and webhook peer."""

from __future__ import annotations

import asyncio
import csv
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, insert, select

from orchestrator import ledger, scheduling
from orchestrator.settings import Settings
from orchestrator.store import OptOut, Send, Step
from tests.engine.conftest import arq_pool, running_worker, until
from tests.engine.eventfiles import EventFiles, Person, crowd
from tests.engine.receiver import Receiver, RunningReceiver

pytestmark = pytest.mark.db
SEND = Send.__table__  # type: ignore[attr-defined]
STEP = Step.__table__  # type: ignore[attr-defined]
OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
CST = timezone(timedelta(hours=8))
STEP_ENDS = {"done", "skipped", "missed"}  # a step's states once it has run (or will not)
JUST_BEFORE = datetime(2027, 6, 10, 17, 59, 30)  # start the clock just before the T-1h reminder: nothing to wait for


def sends(engine: Engine, event_id: str) -> list[Any]:
    """The ledger rows of messages to members (the poster step's rows to guides left out)."""
    with engine.connect() as conn:
        return list(conn.execute(select(SEND).where(SEND.c.event_id == event_id, SEND.c.step_id != "poster")).all())


def step_states(engine: Engine, event_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.step_id: r for r in conn.execute(select(STEP).where(STEP.c.event_id == event_id))}


def closed(engine: Engine, event_id: str) -> Callable[[], bool]:
    return lambda: scheduling.get_event(engine, event_id).state == "closed"


async def run_event(engine: Engine, settings: Settings, redis_url: str, path: Path, *, speed: float = 3600, workers: int = 1,
                    timeout: float = 90, max_jobs: int = 10, until_step: str | None = None, **kw: Any) -> str:
    """Schedule the playbook at `path` and run `workers` until the event closes, or, with
    `until_step`, until that step has ended (a test of one step need not wait for the live)."""
    async with arq_pool(redis_url) as pool:
        result = await scheduling.schedule(engine, pool, settings, path, speed=speed, **kw)
    event_id = result.event_id
    async with contextlib_workers(settings, redis_url, engine, workers, max_jobs):
        if until_step is None:
            await until(closed(engine, event_id), timeout, f"event {event_id} to close")
        else:
            await until(lambda: step_states(engine, event_id)[until_step].state in STEP_ENDS, timeout, f"step {until_step} of {event_id} to end")
    return event_id


class contextlib_workers:
    """`n` workers of ours in this loop (two of them share the work like two processes would)."""

    def __init__(self, settings: Settings, redis_url: str, engine: Engine, n: int, max_jobs: int) -> None:
        self.cms = [running_worker(settings, redis_url, engine, max_jobs) for _ in range(n)]

    async def __aenter__(self) -> None:
        for cm in self.cms:
            await cm.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        for cm in reversed(self.cms):
            await cm.__aexit__(None, None, None)


def test_a_whole_event_runs_by_itself_and_sends_each_message_once(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                                   make_settings: Callable[..., Settings]) -> None:
    sms_people = crowd(30, sms=True)
    mail_only = [Person(f"e{i:03d}", f"邮件{i}", "", f"e{i}@example.com", sms=False, mail=True) for i in range(10)]
    no_consent = [Person(f"n{i:03d}", f"未同意{i}", f"139{i:08d}", f"n{i}@example.com") for i in range(5)]
    opted_by_id = Person("o001", "退订甲", "13700000001", "o1@example.com", sms=True, mail=True)
    opted_sms_by_phone = Person("o002", "退订乙", "13700000002", "o2@example.com", sms=True, mail=True)  # still reachable by e-mail
    staff = [Person("s001", "员工甲", "13600000001", "s1@example.com", sms=True, mail=True)]
    files = EventFiles(people=sms_people + mail_only + no_consent + [opted_by_id, opted_sms_by_phone], staff=staff)
    path = files.write(tmp_path / "event")
    with engine.begin() as conn:
        conn.execute(insert(OPTOUT), [{"member_id": "o001", "address": None, "channel": "*", "source": "api", "at": datetime.now(timezone.utc)},
                                      {"member_id": None, "address": "13700000002", "channel": "sms", "source": "sms_reply", "at": datetime.now(timezone.utc)}])
    settings = make_settings(receiver)

    event_id = asyncio.run(run_event(engine, settings, redis_url, path))

    eligible_sms = {p.id for p in sms_people}
    eligible_mail = {p.id for p in mail_only} | {"o002"}
    per_step = receiver.by_step()
    assert set(per_step) == {"preview", "reminder:hour", "reminder:soon"}
    for step, counts in per_step.items():
        assert set(counts) == eligible_sms | eligible_mail, step
        assert set(counts.values()) == {1}, f"{step}: someone got a message twice"
    channel_of = {(r.body["step"], r.body["member"]["id"]): r.body["channel"] for r in receiver.requests}
    assert {m for (s, m), ch in channel_of.items() if ch == "email"} == eligible_mail
    assert all(r.signed for r in receiver.requests)
    first = next(r for r in receiver.requests if r.body["member"]["id"] == "m000001" and r.body["step"] == "reminder:hour")
    assert first.body["text"] == "【测试品牌】顾客1，直播即将开始，回复TD退订"
    assert first.body["extra"] == {"sms_template": "SMS_100001", "sms_params": {"name": "顾客1"}, "sms_sign": "测试品牌"}
    mail = next(r for r in receiver.requests if r.body["member"]["id"] == "e000" and r.body["step"] == "reminder:hour")
    assert mail.body["subject"] == "引擎测试直播 提醒" and mail.body["text"].startswith("邮件0，引擎测试直播 即将开始")
    assert first.key == f"{event_id}:reminder:hour:m000001:sms"

    rows = sends(engine, event_id)
    assert Counter(r.state for r in rows) == {"sent": 3 * len(eligible_sms | eligible_mail)}
    assert not {r.member_id for r in rows} & {"s001", "o001", *[p.id for p in no_consent]}
    steps = step_states(engine, event_id)
    assert {s.state for s in steps.values()} == {"done"}
    assert "5 no consent" in steps["reminder:hour"].note and "1 excluded" in steps["reminder:hour"].note and "1 opted out" in steps["reminder:hour"].note
    report = Path(settings.data_dir) / "reports" / f"{event_id}-report.html"
    assert report.exists() and "reminder:hour" in report.read_text(encoding="utf-8")
    csv_rows = (Path(settings.data_dir) / "reports" / f"{event_id}-sends.csv").read_text(encoding="utf-8-sig").splitlines()
    assert csv_rows[0].startswith("step,stage,at,channel,sent") and any(line.startswith("reminder:hour,reminder,") for line in csv_rows)
    html = report.read_text(encoding="utf-8")
    assert 'id="no-live-figures"' not in html and 'id="per-guide"' in html and 'id="per-minute"' in html, "the board's figures, at close"
    funnel_csv = (Path(settings.data_dir) / "reports" / f"{event_id}-funnel.csv").read_text(encoding="utf-8-sig").splitlines()
    funnel = {r["step"]: r for r in csv.DictReader(funnel_csv) if r["section"] == "funnel"}
    assert funnel["reminded"]["count"] == str(len(eligible_sms | eligible_mail)) and funnel["scanned"]["count"] == "0"


def test_temporary_failures_retry_with_backoff_and_permanent_ones_stop(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                                      make_settings: Callable[..., Settings]) -> None:
    receiver.fail_times = {"m000001": 2}
    receiver.reject = {"m000002"}
    path = EventFiles(people=crowd(4), preview=None, reminders=[("hour", "T-1h", "[sms]")]).write(tmp_path / "event")
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, path, speed=900, clock_from=JUST_BEFORE, until_step="reminder:hour"))
    by_member = {r.member_id: r for r in sends(engine, event_id)}
    assert by_member["m000001"].state == "sent" and by_member["m000001"].attempts == 3
    assert by_member["m000002"].state == "failed" and "422" in by_member["m000002"].error and by_member["m000002"].attempts == 1
    assert {by_member[m].state for m in ("m000003", "m000004")} == {"sent"}


def test_quiet_hours_defer_a_late_message_to_the_end_of_the_window(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                                   make_settings: Callable[..., Settings]) -> None:
    files = EventFiles(people=crowd(5), preview=None, reminders=[("eve", "T-1d 20:30", "[sms]")], poster_at="T-1d 12:00",
                       live_start="2027-06-11 10:00", live_end="2027-06-11 11:00", policy="late_steps: {action: run_late, tolerance: 4h}")
    path = files.write(tmp_path / "event")
    clock_from = datetime(2027, 6, 10, 23, 0)  # the 20:30 reminder is now 2.5 h late, and 23:00 is quiet
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, path, speed=3600, clock_from=clock_from, timeout=120,
                                     until_step="reminder:eve"))
    step = step_states(engine, event_id)["reminder:eve"]
    assert step.state == "done"
    assert step.at.astimezone(CST).replace(tzinfo=None) == datetime(2027, 6, 11, 8, 0)
    assert len(receiver.delivered()) == 5
    from orchestrator.eventlog import entries

    assert any(e["kind"] == "step-deferred" and "08:00" in e["message"] for e in entries(engine, event_id))


def test_quiet_hours_skip_when_the_policy_says_so(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                  make_settings: Callable[..., Settings]) -> None:
    files = EventFiles(people=crowd(5), preview=None, reminders=[("eve", "T-1d 20:30", "[sms]")], poster_at="T-1d 12:00",
                       live_start="2027-06-11 10:00", live_end="2027-06-11 11:00",
                       policy="quiet_hours_action: skip\n  late_steps: {action: run_late, tolerance: 4h}")
    path = files.write(tmp_path / "event")
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, path, speed=3600, clock_from=datetime(2027, 6, 10, 23, 0),
                                     until_step="reminder:eve"))
    assert step_states(engine, event_id)["reminder:eve"].state == "skipped"
    assert receiver.requests == [] and sends(engine, event_id) == []


def test_steps_late_beyond_tolerance_are_marked_missed(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                       make_settings: Callable[..., Settings]) -> None:
    files = EventFiles(people=crowd(3), policy="late_steps: {action: run_late, tolerance: 15m}")
    path = files.write(tmp_path / "event")
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, path, speed=1200, clock_from=datetime(2027, 6, 10, 18, 30)))
    states = {k: v.state for k, v in step_states(engine, event_id).items()}
    assert states["poster"] == "missed" and states["preview"] == "missed" and states["reminder:hour"] == "missed"
    assert states["reminder:soon"] == "done" and states["live:start"] == "done" and states["close"] == "done"
    assert set(receiver.by_step()) == {"reminder:soon"}


@pytest.mark.parametrize("redis_lost_counts", [False, True], ids=["redis-kept", "redis-lost"])
def test_caps_hold_across_two_events(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                     make_settings: Callable[..., Settings], redis_lost_counts: bool) -> None:
    """Caps count in Redis; when Redis has lost them between the events (a restart without its data),
    the counts stored with the sends take over."""
    people = crowd(8)
    policy = "caps: {per_day: 4, per_month: 20}"
    first = EventFiles(id="cap-a", people=people, policy=policy, live_start="2027-06-10 13:00", live_end="2027-06-10 14:00").write(tmp_path / "a")
    second = EventFiles(id="cap-b", people=people, policy=policy, live_start="2027-06-10 19:00", live_end="2027-06-10 20:00").write(tmp_path / "b")
    settings = make_settings(receiver)
    asyncio.run(run_event(engine, settings, redis_url, first))
    if redis_lost_counts:
        with redis.Redis.from_url(redis_url) as r:
            lost = list(r.scan_iter(match="orch:cap:*"))
            assert lost, "the first event's counts were in Redis"
            r.delete(*lost)
    asyncio.run(run_event(engine, settings, redis_url, second))
    per_person = Counter(r.body["member"]["id"] for r in receiver.delivered())
    assert set(per_person.values()) == {4}, "each person gets 3 messages from the first event and only 1 more from the second"
    b = Counter((r.step_id, r.state) for r in sends(engine, "cap-b"))
    assert b == {("preview", "sent"): 8, ("reminder:hour", "skipped"): 8, ("reminder:soon", "skipped"): 8}
    assert all("cap reached" in r.error for r in sends(engine, "cap-b") if r.state == "skipped")


def test_a_send_of_unknown_outcome_counts_toward_caps(tmp_path: Path, engine: Engine, redis_url: str,
                                                      make_settings: Callable[..., Settings]) -> None:
    """Without idempotency keys a request that got no answer is `unknown`, never repeated; it may
    well have arrived, so it uses up the person's cap like a sent one (here across two events)."""
    people, policy = crowd(4), "caps: {per_day: 4, per_month: 20}"
    first = EventFiles(id="unk-a", people=people, policy=policy, live_start="2027-06-10 13:00", live_end="2027-06-10 14:00").write(tmp_path / "a")
    second = EventFiles(id="unk-b", people=people, policy=policy, live_start="2027-06-10 19:00", live_end="2027-06-10 20:00").write(tmp_path / "b")
    with RunningReceiver(Receiver(delay=1.0, honour_keys=False)) as late:  # answers after the client gave up
        settings = make_settings(late, ORCH_WEBHOOK_IDEMPOTENCY="off", ORCH_WEBHOOK_TIMEOUT="0.3")
        for path in (first, second):
            asyncio.run(run_event(engine, settings, redis_url, path))
        assert {r.state for r in sends(engine, "unk-a")} == {"unknown"} and len(sends(engine, "unk-a")) == 12
        b = Counter((r.step_id, r.state) for r in sends(engine, "unk-b"))
        assert b == {("preview", "unknown"): 4, ("reminder:hour", "skipped"): 4, ("reminder:soon", "skipped"): 4}, b
        assert all("cap reached" in r.error for r in sends(engine, "unk-b") if r.state == "skipped")
        assert len(late.requests) == 16, "each unknown send went out once, none again"
    counts = ledger.counts_of(engine, [p.id for p in people], ("d:2027-06-10", "m:2027-06"))
    assert len(counts) == 8 and set(counts.values()) == {4}, "stored too (a day and a month each): the caps hold when Redis has lost its counts"


def test_rate_limits_hold(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver, make_settings: Callable[..., Settings]) -> None:
    files = EventFiles(people=crowd(90), preview=None, reminders=[("hour", "T-1h", "[sms]")], policy="rate_limits: {sms: 30}")
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, files.write(tmp_path / "event"), speed=2400, clock_from=JUST_BEFORE))
    times = sorted(r.at for r in receiver.requests)
    assert len(times) == 90 and {r.state for r in sends(engine, event_id)} == {"sent"}
    # The bucket grants at most 30 + 30 tokens in any second. The receiver sees arrivals, which lag
    # their grants by the time a request takes to get there (more on a busy machine: CI runs two
    # suites at once), so a second of arrivals may hold a few of the second before; without the
    # limit all 90 arrive within a fraction of a second.
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 70, f"{busiest} requests within one second; the limit is 30/s with bursts of 30"
    assert times[-1] - times[0] >= 1.5, "90 at 30/s after a burst of 30 take two seconds"


def test_a_batch_the_rate_limit_would_hold_past_the_job_gives_its_rows_back(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                                           make_settings: Callable[..., Settings],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain job stops waiting for tokens before arq's timeout would kill it: the rest of its batch goes back to planned,
    without using up an attempt, and the next drains send it; everyone still gets the message once."""
    from orchestrator import fanout

    monkeypatch.setattr(fanout, "HARD_STOP", 0.5)  # seconds into a job (45 s in production); 30 tokens a second: a batch of 200 cannot finish
    files = EventFiles(people=crowd(90), preview=None, reminders=[("hour", "T-1h", "[sms]")], policy="rate_limits: {sms: 30}")
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, files.write(tmp_path / "event"), speed=300, clock_from=JUST_BEFORE,
                                     until_step="reminder:hour"))
    rows = sends(engine, event_id)
    assert len(rows) == 90 and {r.state for r in rows} == {"sent"}
    assert sorted(Counter(receiver.by_step()["reminder:hour"].values()).items()) == [(1, 90)], "each person once"
    assert {r.attempts for r in rows} == {1}, "a row given back did not use up an attempt"


def test_a_rate_limit_wait_that_would_pass_the_deadline_is_refused_at_once(redis_url: str) -> None:
    import time

    from redis.asyncio import Redis

    from orchestrator.limits import RateLimiter

    async def go() -> tuple[bool, bool, float]:
        redis = Redis.from_url(redis_url)
        try:
            limiter = RateLimiter(redis)
            first = await limiter.acquire("sms", 10, rate=10.0, until=time.monotonic() + 5)  # the burst is there
            started = time.monotonic()
            second = await limiter.acquire("sms", 10, rate=10.0, until=time.monotonic() + 0.2)  # a second's worth: past the deadline
            return first, second, time.monotonic() - started
        finally:
            await redis.aclose()

    first, second, _waited = asyncio.run(go())
    assert first and not second


def test_two_workers_on_one_event_send_nothing_twice(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                     make_settings: Callable[..., Settings]) -> None:
    files = EventFiles(people=crowd(1500), preview=None, reminders=[("hour", "T-1h", "[sms]")])
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, files.write(tmp_path / "event"), speed=2400, clock_from=JUST_BEFORE, workers=2, max_jobs=2, timeout=180))
    raw = receiver.by_step()["reminder:hour"]
    assert len(raw) == 1500 and set(raw.values()) == {1}
    assert len({r.claimed_by for r in sends(engine, event_id)}) == 2, "both workers took part"


def test_workers_render_copy_from_the_stored_audience_exactly_as_the_playbook_does(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver, make_settings: Callable[..., Settings]) -> None:
    """A worker reads people from the store, not the audience files; what they see must not change."""
    from orchestrator.load import load_playbook
    from orchestrator.render import render_step

    files = EventFiles(people=crowd(6), preview=None, reminders=[("vip", "T-1h", "[webhook]")])
    path = files.write(tmp_path / "event")
    rows = (path.parent / "members.csv").read_text(encoding="utf-8").splitlines()
    rows = [rows[0] + ",guide,tags"] + [row + (",g1,老客|高净值" if i % 2 else ",,") for i, row in enumerate(rows[1:])]
    (path.parent / "members.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (path.parent / "vip.csv").write_text("id,name,phone,consent_sms\nm000002,顾客2,13800000002,1\nm000005,顾客5,13800000005,1\n", encoding="utf-8")
    copy = ("{{ member.name }}|{{ member.segment }}|{{ member.tags | join('、') }}|"
            "{{ guide.name if guide else '无导购' }}|{{ event.start_text }}")
    text = path.read_text(encoding="utf-8")
    text = text.replace("    - {id: all, name: 全部, file: members.csv}",
                        "    - {id: all, name: 全部, file: members.csv}\n    - {id: vip, name: 重点, file: vip.csv}")
    text = text.replace('''      copy: "{{ member.name }}，{{ event.title }} 即将开始 {{ event.room_url }}"
      sms: {sign: 测试品牌, template_code: SMS_100001, text: "${name}，直播即将开始，回复TD退订", params: {name: "{{ member.name }}"}}''',
                        f'''      segments: [vip]\n      copy: "{copy}"''')
    path.write_text(text, encoding="utf-8")

    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, path, speed=900, clock_from=JUST_BEFORE, until_step="reminder:vip"))

    got = {r.body["member"]["id"]: r.body["text"] for r in receiver.requests if r.body["step"] == "reminder:vip"}
    assert set(got) == {"m000002", "m000005"}, "only the members of the targeted segment"
    loaded = load_playbook(path)
    ev = scheduling.get_event(engine, event_id)
    for member_id, body in got.items():
        assert body == render_step(loaded, "reminder:vip", member_id, ev.live_start).text
    assert got["m000002"].split("|")[1:4] == ["all", "老客、高净值", "小李"]
    assert got["m000005"].split("|")[1:4] == ["all", "", "无导购"]


def test_close_lets_a_fan_out_in_flight_finish_on_a_fast_clock(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver,
                                                                 make_settings: Callable[..., Settings]) -> None:
    """At speed 3,600 close comes 2.3 real seconds after the T-10m reminder, which a rate of 50/s needs 5 s to send."""
    files = EventFiles(people=crowd(300), preview=None, reminders=[("soon", "T-10m", "[sms]")], policy="rate_limits: {sms: 50}")
    event_id = asyncio.run(run_event(engine, make_settings(receiver), redis_url, files.write(tmp_path / "event"), speed=3600,
                                     clock_from=datetime(2027, 6, 10, 18, 49, 30)))
    assert Counter(r.state for r in sends(engine, event_id)) == {"sent": 300}
    assert len(receiver.delivered()) == 300
