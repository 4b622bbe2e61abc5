"""Following WeCom mass-message tasks until each recipient's row is settled.

A reminder through `wecom_customer` is a task the guide must confirm in the WeCom app, one through
`wecom_group` a task the groups' owner confirms (orchestrator.channels.wecom_tasks). Every worker's upkeep calls `check`; one worker at a time
follows an event's tasks (a lock in Redis). Per task:

- confirmed by the guide: each recipient's (customer's or group's) result settles their row:
  delivered -> `sent`, not a friend (any more) or not their group -> `failed`, WeCom's quota
  reached -> `failed`;
- not confirmed REMIND_AFTER (event time) after its step's moment: the guide is reminded through
  WeCom, every REMIND_EVERY, at most REMINDS times in any real 24 hours (WeCom's own limit);
  after the last reminder the staff are alerted once;
- not confirmed STALE_AFTER after its step's moment: the task is cancelled and its rows are
  `skipped`, so a "the live starts in 5 minutes" message never lands an hour late.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timedelta

from orchestrator import audience, eventlog, ledger
from orchestrator.channels.wecom_tasks import WeComTaskTransport
from orchestrator.funnel import Funnel, Seen
from orchestrator.groupposts import CHAT
from orchestrator.poolwatch import running_events, staff_alert
from orchestrator.runtime import Runtime
from orchestrator.scheduling import STEP, event_clock, get_event
from orchestrator.wecom import WeComError

log = logging.getLogger("orchestrator.worker")
REMIND_AFTER = timedelta(minutes=5)
REMIND_EVERY = timedelta(minutes=5)
REMINDS = 3
STALE_AFTER = timedelta(minutes=30)
DAY = 24 * 3600
RESULTS = {1: ("sent", None), 2: ("failed", "not a friend of the guide (any more)"), 3: ("failed", "WeCom quota reached: the customer already had a mass message")}
GROUP_RESULTS = {1: ("sent", None), 2: ("failed", "the group is gone or no longer the sender's"),
                 3: ("failed", "WeCom quota reached: the group already had its mass messages")}


async def check(rt: Runtime) -> None:
    transport = rt.transports.get("wecom_tasks")
    if not isinstance(transport, WeComTaskTransport):
        return
    for event_id in await rt.db(running_events, rt.engine):
        if not await rt.pool.set(f"orch:wecom:follow:{event_id}", rt.worker_id, nx=True, ex=30):
            continue  # another worker follows this event's tasks now
        try:
            await follow(rt, transport, event_id)
        except WeComError as e:
            log.warning("%s: WeCom tasks not followed this round: %s", event_id, e)
        finally:
            await rt.pool.delete(f"orch:wecom:follow:{event_id}")


async def follow(rt: Runtime, transport: WeComTaskTransport, event_id: str) -> None:
    rows = await rt.db(ledger.created_tasks, rt.engine, event_id)
    if not rows:
        return
    ev = await rt.db(get_event, rt.engine, event_id)
    now = event_clock(ev).now()
    step_at = await rt.db(_step_times, rt, event_id)
    people = await rt.db(audience.people, rt.engine, event_id, list({m for _i, m, _s, _t in rows if not m.startswith(CHAT)}))
    by_task: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for row_id, member_id, step_id, msgid in rows:  # each row by what WeCom calls its recipient: a customer, or a group's chat id
        person = people.get(member_id)
        recipient = member_id[len(CHAT):] if member_id.startswith(CHAT) else (person.member.wecom_external_userid if person else None)
        by_task[msgid or ""].append((row_id, recipient or "", step_id))
    client = transport.client()
    settled: list[tuple[int, str, str | None]] = []
    delivered: list[str] = []
    for msgid, items in by_task.items():
        if not msgid:
            settled += [(i, "failed", "no WeCom task id recorded") for i, _c, _s in items]
            continue
        senders = await client.groupmsg_task(msgid)
        waiting = [s["userid"] for s in senders if int(s.get("status", 0)) != 2]
        rows_of = {c: i for i, c, _s in items}
        for s in senders:
            if int(s.get("status", 0)) != 2:
                continue
            for r in await client.groupmsg_send_result(msgid, str(s["userid"])):
                chat = r.get("chat_id")
                row_id = rows_of.get(str(chat or r.get("external_userid", "")))
                outcome = (GROUP_RESULTS if chat else RESULTS).get(int(r.get("status", 0)))
                if row_id is not None and outcome is not None:
                    settled.append((row_id, outcome[0], outcome[1]))
                    member = next(m for i, m, _s, _t in rows if i == row_id)
                    if outcome[0] == "sent" and not member.startswith(CHAT):  # the funnel counts people
                        delivered.append(member)
        if not waiting:
            continue
        due = step_at.get(items[0][2], now)
        if now - due >= STALE_AFTER:
            await client.cancel_groupmsg_send(msgid)
            await transport.give_back_quota([c for _i, c, _s in items if c])  # never delivered: not this month's
            done = {i for i, _s, _e in settled}
            settled += [(i, "skipped", f"cancelled: the guide did not confirm the WeCom task by {(due + STALE_AFTER):%H:%M}")
                        for i, _c, _s in items if i not in done]
            await rt.db(eventlog.record, rt.engine, event_id, "wecom-task-cancelled",
                        f"WeCom task {msgid} cancelled: not confirmed by {', '.join(waiting)} in time", data={"senders": len(waiting)})
        elif now - due >= REMIND_AFTER:
            await _remind(rt, client, event_id, msgid, waiting, now)
    if settled:
        await rt.db(ledger.settle, rt.engine, settled)
    if delivered:
        await Funnel(rt.pool, rt.pipe).count(event_id, "reminded", [Seen(m) for m in delivered])


async def _remind(rt: Runtime, client: object, event_id: str, msgid: str, waiting: list[str], now: datetime) -> None:
    """Remind at most REMINDS times in a real day, REMIND_EVERY apart in event time; alert the staff after the last."""
    key = f"orch:wecom:reminded:{msgid}"
    real = time.time()
    await rt.pool.zremrangebyscore(key, "-inf", real - DAY)
    recent = await rt.pool.zrange(key, 0, -1, withscores=True)
    last = await rt.pool.get(key + ":last")
    if len(recent) >= REMINDS or (last is not None and now.timestamp() - float(last) < REMIND_EVERY.total_seconds()):
        return
    await client.remind_groupmsg_send(msgid)  # type: ignore[attr-defined]
    async with rt.pool.pipeline(transaction=False) as pipe:
        pipe.zadd(key, {f"{real}": real})
        pipe.expire(key, DAY)
        pipe.set(key + ":last", now.timestamp(), ex=DAY)
        await pipe.execute()
    count = len(recent) + 1
    log.info("%s: WeCom task %s reminded (%d of %d): %s", event_id, msgid, count, REMINDS, ", ".join(waiting))
    if count == REMINDS:
        await staff_alert(rt, event_id, "wecom-task-unconfirmed",
                          f"【企微群发未确认】任务 {msgid} 已提醒 {REMINDS} 次，导购 {', '.join(waiting)} 仍未确认发送，请直接联系", {"senders": len(waiting)})


def _step_times(rt: Runtime, event_id: str) -> dict[str, datetime]:
    from sqlalchemy import select

    with rt.engine.connect() as conn:
        return {s: at for s, at in conn.execute(select(STEP.c.step_id, STEP.c.at).where(STEP.c.event_id == event_id))}
