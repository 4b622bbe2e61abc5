"""WeCom mass-message tasks against the fake WeCom: created per guide, confirmed or reminded, cancelled when stale, quota held."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from orchestrator import scheduling
from orchestrator.settings import Settings
from orchestrator.store import LogEntry
from tests.engine.conftest import arq_pool, running_worker, until
from tests.engine.eventfiles import EventFiles, crowd
from orchestrator.fakes.wecom import FakeWeCom, RunningWeCom
from tests.engine.test_event_run import JUST_BEFORE, sends

LOG = LogEntry.__table__  # type: ignore[attr-defined]


def wecom_event(folder: Path, people: int = 3) -> Path:
    files = EventFiles(people=crowd(people), preview=None, guides="id,name,channel_code,wecom_userid\ng1,小李,G01,lili\n",
                       reminders=[("hour", "T-1h", "[wecom_customer]"), ("soon", "T-10m", "[wecom_customer]")])
    path = files.write(folder)
    rows = ["id,name,phone,email,consent_sms,consent_email,wecom_external_userid,consent_wecom,guide"]
    rows += [f"{p.id},{p.name},,,0,0,wm{p.id},1,g1" for p in files.people]
    (folder / "members.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    # one text for everyone: a mass message is one task per guide, not one per person
    path.write_text(path.read_text(encoding="utf-8").replace('"{{ member.name }}，{{ event.title }} 即将开始', '"{{ event.title }} 即将开始'),
                    encoding="utf-8")
    return path


def rows_of(engine: Engine, event_id: str, step: str) -> list[Any]:
    return [r for r in sends(engine, event_id) if r.step_id == step]


def test_tasks_are_created_per_guide_confirmed_reminded_and_cancelled_when_stale(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    with RunningWeCom() as fake:
        fake.received["wmm000002"] = fake.quota  # this customer already had this month's mass messages
        settings = make_settings(REDIS_URL=redis_url, **fake.env())
        path = wecom_event(tmp_path / "event")

        async def go() -> tuple[str, str, str]:
            async with arq_pool(redis_url) as pool:
                event_id = (await scheduling.schedule(engine, pool, settings, path, speed=150, clock_from=JUST_BEFORE)).event_id
            async with running_worker(settings, redis_url, engine):
                created = await until(lambda: [r for r in rows_of(engine, event_id, "reminder:hour") if r.state == "created"]
                                      if len(rows_of(engine, event_id, "reminder:hour")) == 3 else [], 30, "the first task")
                first = created[0].provider_id
                assert len(created) == 3 and {r.provider_id for r in created} == {first}, "one task for the guide's three customers"
                fake.expire_tokens()  # WeCom's token expires meanwhile: refreshed without anyone noticing
                fake.confirm(first, gone={"wmm000003"})
                await until(lambda: all(r.state != "created" for r in rows_of(engine, event_id, "reminder:hour")), 30, "the first task settled")
                await until(lambda: len(rows_of(engine, event_id, "reminder:soon")) == 3
                            and all(r.state == "skipped" for r in rows_of(engine, event_id, "reminder:soon")), 90,
                            "the unconfirmed second task to be cancelled")
                second = rows_of(engine, event_id, "reminder:soon")[0].provider_id
            return event_id, first, second

        event_id, first, second = asyncio.run(go())
        tasks: FakeWeCom = fake
    hour = {r.member_id: r for r in rows_of(engine, event_id, "reminder:hour")}
    assert hour["m000001"].state == "sent"
    assert hour["m000002"].state == "failed" and "quota" in hour["m000002"].error
    assert hour["m000003"].state == "failed" and "not a friend" in hour["m000003"].error
    assert tasks.tasks[first]["sender"] == "lili" and tasks.tasks[first]["text"].startswith("引擎测试直播 即将开始")
    soon = rows_of(engine, event_id, "reminder:soon")
    assert all("did not confirm" in r.error for r in soon) and tasks.tasks[second]["cancelled"]
    assert 1 <= len(tasks.reminds[second]) <= 3, "reminded, never more than WeCom's 3 a day"
    assert tasks.calls["gettoken"] >= 2
    with engine.connect() as conn:
        kinds = [k for (k,) in conn.execute(select(LOG.c.kind).where(LOG.c.event_id == event_id))]
    assert "wecom-task-cancelled" in kinds
    assert ("wecom-task-unconfirmed" in kinds) == (len(tasks.reminds[second]) == 3), "the staff hear of it after the last reminder"
    if "wecom-task-unconfirmed" in kinds:
        assert any("企微群发未确认" in m["text"] for m in tasks.robot_messages), "through the WeCom group robot too"


def test_the_monthly_quota_is_counted_ahead_of_wecom(tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    with RunningWeCom() as fake:
        settings = make_settings(REDIS_URL=redis_url, ORCH_WECOM_QUOTA="1", **fake.env())
        path = wecom_event(tmp_path / "event", people=2)

        async def go() -> str:
            async with arq_pool(redis_url) as pool:
                event_id = (await scheduling.schedule(engine, pool, settings, path, speed=150, clock_from=JUST_BEFORE)).event_id
            async with running_worker(settings, redis_url, engine):
                created = await until(lambda: [r for r in rows_of(engine, event_id, "reminder:hour") if r.state == "created"]
                                      if len(rows_of(engine, event_id, "reminder:hour")) == 2 else [], 30, "the first task")
                fake.confirm(created[0].provider_id)  # the guide sends it: this month's one mass message is used (a cancelled task gives it back)
                await until(lambda: len(rows_of(engine, event_id, "reminder:soon")) == 2
                            and all(r.state == "failed" for r in rows_of(engine, event_id, "reminder:soon")), 60, "the second reminder")
            return event_id

        event_id = asyncio.run(go())
        assert len(fake.tasks) == 1, "the second task never reached WeCom"
    soon = rows_of(engine, event_id, "reminder:soon")
    assert all("quota reached: 1 mass messages this month" in r.error for r in soon)


def test_staff_alerts_go_through_the_robot_paced_within_its_limit(redis_url: str, engine: Engine, make_settings: Callable[..., Settings]) -> None:
    from orchestrator import robot
    from orchestrator.limits import RateLimiter
    from orchestrator.wecom import WeComError
    from redis.asyncio import Redis

    with RunningWeCom() as fake:
        async def go() -> None:
            redis = Redis.from_url(redis_url)
            try:
                limiter = RateLimiter(redis)
                await robot.post(limiter, fake.api, fake.robot_key, "【测试】" + "很长的告警" * 300)  # clipped to 2,048 bytes
                try:
                    await robot.post(limiter, fake.api, "wrong-key", "x")
                except WeComError as e:
                    assert e.errcode == 93000
                else:
                    raise AssertionError("a wrong robot key is an error")
                await robot.post(limiter, fake.api, fake.robot_key, "第二条")
            finally:
                await redis.aclose()
        asyncio.run(go())
        texts = [m["text"] for m in fake.robot_messages]
        gap = fake.robot_messages[1]["at"] - fake.robot_messages[0]["at"]
    assert len(texts) == 2 and len(texts[0].encode()) <= 2048 and texts[0].endswith("…") and texts[1] == "第二条"
    assert gap >= 2.5, "one message every 3 s: never more than 20 a minute"
