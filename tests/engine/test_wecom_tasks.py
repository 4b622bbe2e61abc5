"""WeCom mass-message tasks against the fake WeCom: created per guide, confirmed or reminded, cancelled when stale, quota held."""

from __future__ import annotations

import asyncio
import json
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
from tests.engine.test_pool import PNG
from tests.engine.test_sms import run_event

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


GROUP_JOIN = ('join: {kind: wecom_join_way, capacity: 500, margin: 480, group_name: "测试群{n}", state_prefix: "t-", chat_ids: [wr-a, wr-b], '
              'groups_per_join_way: 3}')


def group_event(folder: Path, guides: str) -> Path:
    """An event on WeCom join ways whose T-1h reminder only goes into the groups (one text: no one's name); join at T-2h."""
    path = EventFiles(people=crowd(2), preview=None, poster_at="T-2h", join=GROUP_JOIN, guides=guides,
                      reminders=[("hour", "T-1h", "[wecom_group]")]).write(folder)
    path.write_text(path.read_text(encoding="utf-8").replace('"{{ member.name }}，{{ event.title }} 即将开始', '"{{ event.title }} 即将开始'),
                    encoding="utf-8")
    return path


def test_a_group_post_is_one_task_per_owner_into_each_of_the_event_groups_once(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    with RunningWeCom() as fake:
        for chat, owner in (("wr-a", "lili"), ("wr-b", "wangwu"), ("wr-c", "lili"), ("wr-other", "lili")):
            fake.add_chat(chat, owner=owner)  # wr-other: a group of lili's that is not this event's
        fake.received["wr-b"] = fake.quota  # WeCom counts this group's month as used (another tool posted into it)
        settings = make_settings(REDIS_URL=redis_url, **fake.env())
        path = group_event(tmp_path / "event", "id,name,channel_code,wecom_userid\ng1,小李,G01,lili\ng2,小王,G02,wangwu\n")

        async def go() -> str:
            async with arq_pool(redis_url) as pool:
                event_id = (await scheduling.schedule(engine, pool, settings, path, speed=150,
                                                      clock_from=JUST_BEFORE.replace(hour=16))).event_id
            async with running_worker(settings, redis_url, engine):
                await until(lambda: len(fake.join_ways) == 2, 30, "the join ways of both guides")
                first = sorted(fake.join_ways)[0]
                fake.join_ways[first]["chat_id_list"].append("wr-c")  # WeCom opened wr-c when wr-a filled
                created = await until(lambda: [r for r in rows_of(engine, event_id, "reminder:hour") if r.state == "created"]
                                      if len(rows_of(engine, event_id, "reminder:hour")) == 3 else [], 60, "the group tasks")
                for msgid in {r.provider_id for r in created}:
                    fake.confirm(msgid)  # each owner sends it from the app
                await until(lambda: all(r.state not in ("created", "planned", "sending") for r in rows_of(engine, event_id, "reminder:hour")),
                            30, "the group posts settled")
            return event_id

        event_id = asyncio.run(go())
        group_tasks = [t for t in fake.tasks.values() if t["chat_type"] == "group"]
        add_bodies = fake.bodies["externalcontact/add_msg_template"]
    rows = {r.member_id: r for r in rows_of(engine, event_id, "reminder:hour")}
    assert set(rows) == {"chat:wr-a", "chat:wr-b", "chat:wr-c"}, "each group behind the event's join ways, once; no other group, no person"
    assert rows["chat:wr-a"].state == rows["chat:wr-c"].state == "sent"
    assert rows["chat:wr-a"].sender == rows["chat:wr-c"].sender == "lili", "who had to confirm the task (the board counts it to g1)"
    assert rows["chat:wr-b"].state == "failed" and "quota" in rows["chat:wr-b"].error
    assert sorted((t["sender"], sorted(t["customers"])) for t in group_tasks) == [("lili", ["wr-a", "wr-c"]), ("wangwu", ["wr-b"])], \
        "one task per owner, into their groups"
    assert all(t["text"].startswith("引擎测试直播 即将开始") for t in group_tasks)
    assert all(b["chat_type"] == "group" and b["chat_id_list"] for b in add_bodies), "always names the groups: never all of an owner's"
    assert "wr-other" not in {c for t in group_tasks for c in t["customers"]}
    with engine.connect() as conn:
        notes = [m for (m,) in conn.execute(select(LOG.c.message).where(LOG.c.event_id == event_id, LOG.c.kind == "fanout"))]
    assert any("posted into 3 groups" in n for n in notes)


def test_group_posts_routed_elsewhere_are_a_row_per_pool_group(tmp_path: Path, engine: Engine, redis_url: str,
                                                               make_settings: Callable[..., Settings]) -> None:
    folder = tmp_path / "event"
    folder.mkdir()
    for n in (1, 2):
        (folder / f"g{n}.png").write_bytes(PNG + bytes([n]))
    join = ('join: {kind: wechat_group_codes, capacity: 50, margin: 45, group_name: "测试群{n}", codes: '
            '[{name: 测试群1, image: g1.png, expires: 2027-06-15 00:00}, {name: 测试群2, image: g2.png, expires: 2027-06-15 00:00}]}')
    path = EventFiles(people=crowd(3), preview=None, join=join, reminders=[("hour", "T-1h", "[sms, wecom_group]")]).write(folder)
    settings = make_settings(ORCH_ROUTES="sms=console,email=console,wecom_group=console")  # the brand posts them (here: the console log)

    event_id = asyncio.run(run_event(engine, settings, redis_url, path, clock_from=JUST_BEFORE))

    rows = {r.member_id: r for r in rows_of(engine, event_id, "reminder:hour")}
    assert set(rows) == {"m000001", "m000002", "m000003", "group:1", "group:2"}
    assert {r.state for r in rows.values()} == {"sent"} and rows["group:1"].channel == "wecom_group", [(r.member_id, r.error) for r in rows.values()]
    lines = [json.loads(line) for line in (Path(settings.data_dir) / "console" / f"{event_id}.jsonl").read_text(encoding="utf-8").splitlines()]
    posts = {line["member"]: line["text"] for line in lines if line["channel"] == "wecom_group"}
    assert set(posts) == {"group:1", "group:2"} and len({*posts.values()}) == 1, "one text for every group"
    assert "引擎测试直播 即将开始" in posts["group:1"] and "顾客" not in posts["group:1"], "no one's name in a group's text"


def test_a_wecom_that_cannot_list_the_join_ways_groups_still_gets_the_playbooks_groups_posted(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    with RunningWeCom() as fake:
        for chat in ("wr-a", "wr-b"):
            fake.add_chat(chat, owner="lili")
        settings = make_settings(REDIS_URL=redis_url, **fake.env())
        path = group_event(tmp_path / "event", "id,name,channel_code,wecom_userid\ng1,小李,G01,lili\n")

        async def go() -> str:
            async with arq_pool(redis_url) as pool:
                event_id = (await scheduling.schedule(engine, pool, settings, path, speed=600,
                                                      clock_from=JUST_BEFORE.replace(hour=16))).event_id
            async with running_worker(settings, redis_url, engine):
                await until(lambda: len(fake.join_ways) == 1, 30, "the join way")
                fake.fail_next["externalcontact/groupchat/get_join_way"] = [60011]  # no privilege: the app lost its 客户群 rights
                await until(lambda: len(rows_of(engine, event_id, "reminder:hour")) == 2
                            and all(r.state == "created" for r in rows_of(engine, event_id, "reminder:hour")), 30, "the group task")
            return event_id

        event_id = asyncio.run(go())
    assert {r.member_id for r in rows_of(engine, event_id, "reminder:hour")} == {"chat:wr-a", "chat:wr-b"}
    with engine.connect() as conn:
        note = conn.execute(select(scheduling.STEP.c.note).where(scheduling.STEP.c.event_id == event_id,
                                                                 scheduling.STEP.c.step_id == "reminder:hour")).scalar_one()
    assert "posted into 2 groups" in note and "could not be read" in note and "60011" in note


def test_a_group_posts_calls_are_counted_per_owner_once_the_owners_are_known(redis_url: str, make_settings: Callable[..., Settings]) -> None:
    """What the channel's rate limit takes for a batch of group posts: a task per owner and text,
    as WeCom is called; before the owners are known, a group each (never fewer than the calls)."""
    from redis.asyncio import Redis

    from orchestrator.channels.base import Outgoing
    from orchestrator.channels.wecom_tasks import from_settings

    with RunningWeCom() as fake:
        for chat, owner in (("wr-a", "lili"), ("wr-b", "wangwu"), ("wr-c", "lili")):
            fake.add_chat(chat, owner=owner)
        posts = [Outgoing(f"ev:reminder:hour:chat:{chat}:wecom_group", "ev", "reminder:hour", f"chat:{chat}", "wecom_group", chat, "开播啦",
                          {"chat_id": chat}) for chat in ("wr-a", "wr-b", "wr-c")]

        async def go() -> tuple[int, list[str], int]:
            redis = Redis.from_url(redis_url)
            transport = from_settings(make_settings(**fake.env()), redis)
            try:
                before = transport.calls(posts)
                outcomes = await transport.send_batch(posts)
                return before, [o.state for o in outcomes], transport.calls(posts)
            finally:
                await transport.close()
                await redis.aclose()

        before, states, after = asyncio.run(go())
        tasks = [t for t in fake.tasks.values() if t["chat_type"] == "group"]
    assert states == ["created"] * 3 and len(tasks) == 2
    assert (before, after) == (3, 2), "3 groups of 2 owners: 2 tasks"
