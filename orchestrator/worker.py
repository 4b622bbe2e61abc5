"""The arq worker: job functions, start-up reconciliation and the upkeep loop.

Every job function has a short timeout (see ../docs/operations.md, "Crashes"): after a SIGKILL,
arq hands a job to another worker only when its in-progress key expires (timeout + 10 s).
Beside the jobs, each worker runs an upkeep loop every few seconds: a heartbeat in Redis,
resolution of sends left `sending` by workers whose heartbeat is gone, restarting the sending
of steps nobody drains, and re-enqueueing steps whose jobs Redis lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from arq import func
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker
from sqlalchemy import Engine, func as sqlfunc, select

from orchestrator import eventlog, joins, jobs, ledger, poolwatch, taskwatch, welcome
from orchestrator.fanout import drain
from orchestrator.instream import InStream
from orchestrator.load import LoadedPlaybook
from orchestrator.runtime import HEARTBEAT, Runtime
from orchestrator.scheduling import EVENT, OPEN_STEP_STATES, STEP, event_clock, get_event, loaded_event
from orchestrator.settings import Settings
from orchestrator.stages import run_step
from orchestrator.store import Claimer, Event, Send, open_store, utc_now

log = logging.getLogger("orchestrator.worker")
SEND = Send.__table__  # type: ignore[attr-defined]
CLAIMER = Claimer.__table__  # type: ignore[attr-defined]
JOB_TIMEOUT = 45  # seconds; a killed job is picked up again after JOB_TIMEOUT + 10 s
UPKEEP_EVERY = 2.0
HEARTBEAT_TTL = 8
STALLED_AFTER = timedelta(seconds=20)
LOST_AFTER = timedelta(seconds=10)


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx.get("settings") or Settings.from_env()
    engine: Engine | None = ctx.get("engine")
    if engine is None:
        engine = await asyncio.to_thread(open_store, settings.database_url)
    rt = Runtime(settings, engine, ctx["redis"])
    ctx["rt"] = rt
    await rt.pool.set(HEARTBEAT + rt.worker_id, "1", ex=HEARTBEAT_TTL)
    ctx["upkeep"] = asyncio.create_task(upkeep_loop(rt))
    from orchestrator.board import publisher

    ctx["board"] = asyncio.create_task(publisher(rt.pool, engine))
    loop = type(asyncio.get_running_loop())
    log.info("worker %s started (event loop: %s.%s)", rt.worker_id, loop.__module__.split(".")[0], loop.__name__)


async def shutdown(ctx: dict[str, Any]) -> None:
    for name in ("upkeep", "board"):
        task = ctx.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    rt: Runtime | None = ctx.get("rt")
    if rt is not None:
        await rt.pool.delete(HEARTBEAT + rt.worker_id)
        await rt.close()


async def upkeep_loop(rt: Runtime) -> None:
    while True:
        try:
            await upkeep(rt)
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must outlive a database hiccup
            log.exception("upkeep failed; trying again")
        await asyncio.sleep(UPKEEP_EVERY)


async def live_workers(pool: ArqRedis) -> set[str]:
    found = set()
    async for key in pool.scan_iter(match=HEARTBEAT + "*", count=500):
        name = key.decode() if isinstance(key, bytes) else str(key)
        found.add(name[len(HEARTBEAT):])
    return found


async def upkeep(rt: Runtime) -> None:
    await rt.pool.set(HEARTBEAT + rt.worker_id, "1", ex=HEARTBEAT_TTL)
    alive = await live_workers(rt.pool)
    resolved = await rt.db(ledger.resolve_orphans, rt.engine, alive, rt.idempotent())
    for (event_id, step_id), (retried, unknown) in resolved.items():
        if retried:
            log.warning("%s %s: %d sends of a stopped worker go out again (same idempotency keys)", event_id, step_id, retried)
            await rt.db(eventlog.record, rt.engine, event_id, "recovered",
                        f"{step_id}: {retried} sends left in flight by a stopped worker are retried with their idempotency keys", step_id=step_id)
        if unknown:
            log.warning("%s %s: %d sends of a stopped worker have an unknown outcome; not repeated", event_id, step_id, unknown)
            await rt.db(eventlog.record, rt.engine, event_id, "unknown",
                        f"{step_id}: {unknown} sends were in flight when a worker stopped; the channel has no idempotency key, "
                        f"so they are marked unknown and not repeated", step_id=step_id, data={"unknown": unknown})
        await _restart_drain(rt, event_id, step_id, "recovery")
    for event_id, step_id in await rt.db(_stalled_steps, rt.engine):
        await _restart_drain(rt, event_id, step_id, "stalled")
    await poolwatch.check(rt)
    await taskwatch.check(rt)
    await welcome.send_due(rt, lambda event_id: _loaded(rt, event_id))
    await InStream(rt.pool).move_all(rt.engine)
    await joins.count_missed(rt.pool, rt.engine)  # joins that came while Redis was away
    for event_id, step_id, revision, at in await rt.db(_overdue_steps, rt.engine):
        ev = await rt.db(get_event, rt.engine, event_id)
        clock = event_clock(ev)
        if clock.now() - at < LOST_AFTER * clock.speed:
            continue
        if not await jobs.job_known(rt.pool, jobs.step_job_id(event_id, step_id, revision)):
            if await jobs.enqueue_step(rt.pool, clock, event_id, step_id, revision, at, suffix=":late"):
                log.warning("%s %s: its job was lost (Redis restarted?); enqueued again", event_id, step_id)


async def _loaded(rt: Runtime, event_id: str) -> tuple[Event, LoadedPlaybook]:
    ev = await rt.db(get_event, rt.engine, event_id)
    return ev, await rt.db(loaded_event, rt.engine, ev, members=False)


async def _restart_drain(rt: Runtime, event_id: str, step_id: str, why: str) -> None:
    ev = await rt.db(get_event, rt.engine, event_id)
    tag = f"{why}{int(utc_now().timestamp()) // 10}"
    await jobs.enqueue_drain(rt.pool, event_id, step_id, ev.revision, tag, 0)


def _stalled_steps(engine: Engine) -> list[tuple[str, str]]:
    """Steps being sent with planned rows, nothing in flight, and no claim for a while.

    Every worker asks this every few seconds, so a healthy fan-out must cost one probe of
    `claimer` (a claim in the step a moment ago?), not a read of the step's rows: that took 75-105
    ms at 100,000 recipients on PostgreSQL. Only a step no worker has claimed in for a while has
    its rows read: a planned row? none in flight? the last claim?"""
    now = utc_now()
    out = []
    with engine.connect() as conn:
        for event_id, step_id in conn.execute(select(STEP.c.event_id, STEP.c.step_id).join(EVENT, EVENT.c.id == STEP.c.event_id)
                                              .where(STEP.c.state == "sending", EVENT.c.state == "running")).all():
            recent = conn.execute(select(sqlfunc.max(CLAIMER.c.last_at)).where(CLAIMER.c.event_id == event_id, CLAIMER.c.step_id == step_id)).scalar_one()
            if recent is not None and now - recent <= STALLED_AFTER:
                continue
            of_step = (SEND.c.event_id == event_id, SEND.c.step_id == step_id)
            planned = conn.execute(select(SEND.c.id).where(*of_step, SEND.c.state == "planned").limit(1)).first()
            if planned is None or conn.execute(select(SEND.c.id).where(*of_step, SEND.c.state == "sending").limit(1)).first() is not None:
                continue
            last = conn.execute(select(sqlfunc.max(SEND.c.claimed_at)).where(*of_step)).scalar_one()
            last = last.replace(tzinfo=now.tzinfo) if last is not None and last.tzinfo is None else last
            if last is None or now - last > STALLED_AFTER:
                out.append((event_id, step_id))
    return out


def _overdue_steps(engine: Engine) -> list[tuple[str, str, int, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(STEP.c.event_id, STEP.c.step_id, STEP.c.revision, STEP.c.at).join(EVENT, EVENT.c.id == STEP.c.event_id)
                            .where(STEP.c.state.in_(OPEN_STEP_STATES), EVENT.c.state.in_(("scheduled", "running")))).all()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


FUNCTIONS = [
    func(run_step, name=jobs.RUN_STEP, timeout=JOB_TIMEOUT, max_tries=25),
    func(drain, name=jobs.DRAIN, timeout=JOB_TIMEOUT, max_tries=25),
]


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


def settle_process() -> None:
    """What a worker process sets once its worker is built (`orchestrator worker`, and the
    benches, which run it as that command does): what exists now is frozen out of the garbage
    collector's walks (`steady_gc`), and threads hand the GIL over every 0.5 ms. The board's
    publisher shares the process with the threads that move ingested items into the store
    (SQLAlchemy, pure Python, holding the GIL): at the default 5 ms a thread holds it before
    handing over, a publish (p50 0.9 ms) had a p99 of 10-17 ms; at 0.5 ms, 6-11 (bench/board.py,
    2,000 comments/s)."""
    import sys

    from orchestrator.steadygc import steady_gc

    steady_gc()
    sys.setswitchinterval(0.0005)


def use_uvloop() -> None:
    """Give this thread a uvloop event loop, for the worker `make_worker` builds next (arq takes the
    thread's loop when the worker is made). The engine's sending (the webhook channel's HTTP/1.1
    connections), Redis and arq all run on it. bench/fanout.py on PostgreSQL, one run each (figures
    on the 2-core machine vary by a third between runs): 10,000 / 100,000 recipients, engine 5,886 /
    6,597 sends/s on asyncio's own loop, 8,619 / 6,890 on uvloop; the bench's baselines, on the
    same loop as the engine, gained as much (bare loop 13,271 -> 15,348 at 10,000)."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows and PyPy have none: asyncio's own loop
        return
    asyncio.set_event_loop(uvloop.new_event_loop())


def make_worker(settings: Settings, redis_url: str, *, engine: Engine | None = None, burst: bool = False, max_jobs: int = 10,
                handle_signals: bool = True) -> Worker:
    ctx: dict[str, Any] = {"settings": settings}
    if engine is not None:
        ctx["engine"] = engine
    return Worker(
        functions=FUNCTIONS, redis_settings=redis_settings(redis_url), on_startup=startup, on_shutdown=shutdown, ctx=ctx,
        burst=burst, max_jobs=max_jobs, job_timeout=JOB_TIMEOUT, poll_delay=0.2, handle_signals=handle_signals,
        keep_result=3600, log_results=False,
    )


async def pool_for(redis_url: str) -> ArqRedis:
    return await create_pool(redis_settings(redis_url))


class WorkerSettings:
    """For `arq orchestrator.worker.WorkerSettings` (REDIS_URL must be set); `orchestrator worker` is the usual way."""

    functions = FUNCTIONS
    on_startup = startup
    on_shutdown = shutdown
    job_timeout = JOB_TIMEOUT
    poll_delay = 0.2

    @staticmethod
    def _settings() -> Settings:  # pragma: no cover - used by the arq CLI only
        return Settings.from_env()
