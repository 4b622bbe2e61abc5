"""Warnings about the group pool of running events: few places left, a group code about to expire.

Checked by every worker's upkeep; each warning goes out once per event (and per group for an
expiring code), whichever worker sees it first: to the log, the event log, and the staff through the
console channel and the WeCom group robot (ORCH_WECOM_ROBOT_KEY). The text is the playbook's
`support.alerts.pool_low` copy when it has one.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import aiohttp
from sqlalchemy import Engine, select

from orchestrator import eventlog, robot
from orchestrator.channels.base import Outgoing
from orchestrator.copytext import render_copy
from orchestrator.load import LoadedPlaybook
from orchestrator.pool import Pool
from orchestrator.runtime import Runtime
from orchestrator.scheduling import EVENT, get_event, loaded_event
from orchestrator.store import utc_now
from orchestrator.validate import copy_context
from orchestrator.wecom import WeComError

log = logging.getLogger("orchestrator.worker")
ONCE = timedelta(days=30)  # how long "already warned" is remembered


def running_events(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [e for (e,) in conn.execute(select(EVENT.c.id).where(EVENT.c.state == "running"))]


async def check(rt: Runtime) -> None:
    pool = Pool(rt.pool, rt.engine)
    now = utc_now()
    for event_id in await rt.db(running_events, rt.engine):
        health = await pool.health(event_id, now)
        if health is None:
            continue
        ev = await rt.db(get_event, rt.engine, event_id)
        loaded = await rt.db(loaded_event, rt.engine, ev, members=False)
        alerts = loaded.playbook.support.alerts
        if health.places_left < alerts.pool_low_below and await _first(rt, f"orch:pool:{event_id}:warned:low"):
            default = f"【群池告警】{loaded.playbook.title}：群池只剩 {health.places_left} 个名额，请尽快添加新群（orchestrator groups add）"
            text = _text(loaded, alerts.pool_low, health.places_left, health.current, default)
            await staff_alert(rt, event_id, "pool-low", text, {"places_left": health.places_left})
        for number in health.expiring:
            if await _first(rt, f"orch:pool:{event_id}:warned:expiring:{number}"):
                text = f"【群池告警】{loaded.playbook.title}：第 {number} 个群的二维码一天内过期，请更新群码或添加新群"
                await staff_alert(rt, event_id, "pool-expiring", text, {"group": number})


async def _first(rt: Runtime, key: str) -> bool:
    return bool(await rt.pool.set(key, "1", nx=True, ex=int(ONCE.total_seconds())))


def _text(loaded: LoadedPlaybook, copy: str | None, left: int, current: int, default: str) -> str:
    if copy is None:
        return default
    ctx = copy_context(loaded, None)
    ctx["pool"] = {"remaining": left, "group": loaded.playbook.path.join.group_name.replace("{n}", str(current))}
    try:
        return render_copy(copy, ctx)
    except Exception as e:  # the alert still goes out, with the reason its copy failed
        return f"{default}（告警文案出错：{e}）"


async def staff_alert(rt: Runtime, event_id: str, kind: str, text: str, data: dict[str, int]) -> None:
    """Tell the staff: the log, the event log, the console channel, and the WeCom group robot when
    ORCH_WECOM_ROBOT_KEY is set (a robot that refuses is logged; the alert is in the event log anyway)."""
    log.warning("%s: %s", event_id, text)
    await rt.db(eventlog.record, rt.engine, event_id, kind, text, data=data)
    console = rt.transports.get("console")
    if console is not None:
        await console.send(Outgoing(f"{event_id}:alert:{kind}:{utc_now():%Y%m%d%H%M%S}", event_id, "alert", "staff", "staff_alert", "值班同事", text))
    key = rt.settings.wecom_robot_key
    if key:
        try:
            await robot.post(rt.limiter, rt.settings.wecom_api, key, text)
        except (WeComError, aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.log(logging.ERROR, "%s: the WeCom robot did not take the alert (%s): %s", event_id, kind, e)
