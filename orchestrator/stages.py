"""One handler per stage; `run_step` is the arq job that runs a step when its time comes.

A step job starts by taking the step (one conditional UPDATE, so a duplicate job does nothing),
applies the playbook's policy for late steps, then hands over to its stage. Stages owned by
later work (draws) record the step and say so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from orchestrator import audience, eventlog, groupposts, jobs, ledger
from orchestrator.clock import Clock
from orchestrator.copytext import mask
from orchestrator.instream import InStream
from orchestrator.eligibility import CONSENT_OF, consent_of, optouts_of
from orchestrator.eligibility import select as select_recipients
from orchestrator.errors import UnknownEvent
from orchestrator.load import LoadedPlaybook
from orchestrator.plan import localize
from orchestrator.pool import Pool, groups_of
from orchestrator.playbook import Channel, Message
from orchestrator.runtime import Runtime
from orchestrator.scheduling import EVENT, STEP, event_clock, get_event, loaded_event
from orchestrator.store import Event, Step, utc_now
from orchestrator.timespec import QuietHours

log = logging.getLogger("orchestrator.worker")
LANES = 4  # drain jobs per message step: parallel sending across workers
ALWAYS_RUN = {"live_start", "live_end", "draw_screenshot", "draw_deposit", "close"}
MISSED_GRACE = timedelta(minutes=1)
REAL_GRACE = 1.0  # real seconds of job pick-up latency never counted as lateness (see `lateness`)
REHEARSAL_GRACE = 10.0
CLOSE_WAIT = 30.0  # real seconds close waits for sends still going (JOB_TIMEOUT is 45)
# A step left `running` this long was taken by a job that is no longer running (a job is stopped at
# JOB_TIMEOUT, 45 s; 5 s more for two hosts' clocks), so it may be taken again, in time for arq's
# rerun of a killed worker's job (JOB_TIMEOUT + 10 s after it began; at 90 s that rerun found the
# step too young and the step waited an hour for the upkeep).
RETAKE_AFTER = timedelta(seconds=50)
LATER: dict[str, str] = {}
POSTER_BUDGET = 20.0  # seconds of drawing posters per job (JOB_TIMEOUT is 45); the rest in a successor job
POSTER_CHUNK = 16  # posters drawn and stored at a time (~35 ms each)
FREEZE_SLEEP = 20.0  # real seconds a draw job waits for its freeze moment itself; longer, it comes back then

Handler = Callable[[Runtime, Event, Step, LoadedPlaybook, Clock], Awaitable[str]]


async def run_step(ctx: dict[str, Any], event_id: str, step_id: str, revision: int) -> str:
    rt: Runtime = ctx["rt"]
    try:
        ev = await rt.db(get_event, rt.engine, event_id)
    except UnknownEvent:
        return "no such event"
    if ev.state in ("cancelled", "closed"):
        return f"event {ev.state}"
    clock = event_clock(ev)
    taken = await rt.db(_take, rt, event_id, step_id, revision)
    if taken is None:
        return "not due: stale revision, already run, or cancelled"
    step, resumed = taken
    now = clock.now()
    if ev.state == "scheduled":
        await rt.db(_set_event_state, rt, event_id, "running")
    loaded = await rt.db(loaded_event, rt.engine, ev, members=False)
    late = lateness(clock, step.at, now)
    policy = loaded.playbook.policy.late_steps
    if not resumed and step.stage not in ALWAYS_RUN and late > MISSED_GRACE and (policy.action == "mark_missed" or late > policy.tolerance):
        note = f"missed: {_human(late)} late (policy {policy.action}, tolerance {_human(policy.tolerance)})"
        await rt.db(_finish_step, rt, event_id, step_id, "missed", note)
        await rt.db(eventlog.record, rt.engine, event_id, "step-missed", f"{step_id} {note}", step_id=step_id, event_time=now)
        return note
    handler = HANDLERS.get(step.stage, _record_only)
    return await handler(rt, ev, step, loaded, clock)


def lateness(clock: Clock, due: datetime, now: datetime) -> timedelta:
    """How late a step runs, in event time.

    The real seconds a busy worker takes to pick a job up are not lateness: up to one second on a
    real clock, and up to ten on an accelerated one (at speed 5,000 ten seconds are 14 event
    hours, which a rehearsal on a laptop must not turn into missed steps). A step that was
    already due when the accelerated clock started (`--clock-from`) is late by the full amount.
    """
    late = now - due
    if late <= timedelta(0):
        return timedelta(0)
    grace = REAL_GRACE
    if not clock.is_real and due.timestamp() >= clock.virtual_origin:
        grace = REHEARSAL_GRACE
    if late.total_seconds() / clock.speed <= grace:
        return timedelta(0)
    return late


def moment_of(clock: Clock, due: datetime) -> datetime:
    """The event time a step acts at: its own time when on time, else now."""
    now = clock.now()
    return due if lateness(clock, due, now) == timedelta(0) else now


def _take(rt: Runtime, event_id: str, step_id: str, revision: int) -> tuple[Step, bool] | None:
    """Take the step to run it: (the step, whether it is one its previous job left `continuing`),
    or None when it is not this job's to run."""
    now = utc_now()
    this = (STEP.c.event_id == event_id, STEP.c.step_id == step_id, STEP.c.revision == revision)
    with rt.engine.begin() as conn:
        resumed = bool(conn.execute(update(STEP).where(*this, STEP.c.state == "continuing").values(state="running", started_at=now)).rowcount)
        if not resumed and not conn.execute(
            update(STEP).where(*this, (STEP.c.state.in_(("scheduled", "deferred"))) | ((STEP.c.state == "running") & (STEP.c.started_at < now - RETAKE_AFTER)))
            .values(state="running", started_at=now)
        ).rowcount:
            return None
        row = conn.execute(select(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id)).one()
    return Step(**row._mapping), resumed


def _set_event_state(rt: Runtime, event_id: str, state: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(EVENT).where(EVENT.c.id == event_id, EVENT.c.state.notin_(("cancelled", "closed"))).values(state=state, updated_at=utc_now()))


def _finish_step(rt: Runtime, event_id: str, step_id: str, state: str, note: str | None = None, audience: int | None = None) -> None:
    values: dict[str, Any] = {"state": state, "finished_at": utc_now()}
    if note is not None:
        values["note"] = note
    if audience is not None:
        values["audience"] = audience
    with rt.engine.begin() as conn:
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id).values(**values))


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


async def _record_only(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    note = LATER.get(step.stage, "recorded")
    if step.stage == "sop_cue":
        note = f"host cue: {step.label}"
    elif step.stage == "staff_script":
        note = f"staff script (shown to staff, never sent): {step.label}"
    await rt.db(_finish_step, rt, ev.id, step.step_id, "done", note)
    await rt.db(eventlog.record, rt.engine, ev.id, step.stage, f"{step.step_id}: {note}", step_id=step.step_id, event_time=clock.now())
    log.info("%s %s: %s", ev.id, step.step_id, note)
    return note


async def _live(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    live = loaded.playbook.path.live
    note = (f"live starts on {live.platform}: {live.room_url}" if step.stage == "live_start" else "live ends")
    await rt.db(_finish_step, rt, ev.id, step.step_id, "done", note)
    await rt.db(eventlog.record, rt.engine, ev.id, step.stage, note, step_id=step.step_id, event_time=clock.now())
    return note


async def _posters(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    """Draw and store a poster per guide x variant, then send each guide the links to theirs.

    Posters are drawn a chunk at a time and stored as they are made, with what they were drawn
    from: a job draws for at most POSTER_BUDGET seconds, then leaves the step `continuing` and
    enqueues a successor, which draws only what is not stored yet. So a thousand guides' posters
    (~35 ms each) never outlast a job's timeout, however many jobs they take (a successor is a new
    job, not a try of this one: arq's max_tries does not cap them), and a step run again draws
    nothing it has."""
    from orchestrator import posters

    pb = loaded.playbook
    began = time.monotonic()
    codes = await rt.db(posters.codes_of, rt.engine, ev.id)
    start = ev.live_start.astimezone(pb.tz)
    todo, total = await rt.db(posters.to_draw, rt.engine, ev.id, loaded, start, codes, rt.settings.public_url, rt.settings.font_path)
    while todo:
        chunk, todo = todo[:POSTER_CHUNK], todo[POSTER_CHUNK:]
        await rt.db(posters.store, rt.engine, await rt.db(posters.draw, chunk, rt.settings.font_path))
        if todo and time.monotonic() - began > POSTER_BUDGET:
            drawn = total - len(todo)
            note = f"{drawn} of {total} posters drawn; the rest in the next job"
            await rt.db(_set_step_state, rt, ev.id, step.step_id, "continuing", note)
            await rt.db(eventlog.record, rt.engine, ev.id, "poster-progress", f"{step.step_id}: {note}", step_id=step.step_id,
                        event_time=clock.now(), data={"drawn": drawn, "posters": total})
            log.info("%s %s: %s", ev.id, step.step_id, note)
            # the successor's id names how far this job got: enqueued twice (a retried job), it runs once
            await jobs.enqueue_step(rt.pool, clock, ev.id, step.step_id, step.revision, clock.now(), suffix=f":drawn{drawn}")
            return note
    key = await rt.db(posters.page_key, rt.engine, ev.id)
    page = posters.page_url(rt.settings.public_url, ev.id, key)
    routes = rt.routes(ev.mode)
    channel = next((c.value for c in pb.path.poster.channels if c.value in routes), None)
    transport = rt.transports.get(routes[channel]) if channel else None
    note = f"{total} posters ({len(loaded.guides)} guides x {len(pb.path.poster.variants)} variants); page {page}"
    if channel is None or transport is None:
        note += "; not delivered: no transport for the poster channels on this worker"
    else:
        base = rt.settings.public_url.rstrip("/")
        links = {g.id: [(v.id, f"{base}/p/{codes[(g.id, v.id)]}.png") for v in pb.path.poster.variants if (g.id, v.id) in codes]
                 for g in loaded.guides}
        post_at = moment_of(clock, step.at).astimezone(pb.tz)
        texts = {g.id: posters.guide_text(g, pb.title, start, links.get(g.id, []), post_at) for g in loaded.guides}
        sent, failed = await posters.deliver(rt.engine, ev.id, rt.worker_id, loaded.guides, texts, channel, routes[channel], transport)
        note += f"; sent to {sent} guides through {channel}" + (f", {failed} failed" if failed else "")
    await rt.db(_finish_step, rt, ev.id, step.step_id, "done", note, len(loaded.guides))
    await rt.db(eventlog.record, rt.engine, ev.id, step.stage, f"{step.step_id}: {note}", step_id=step.step_id, event_time=clock.now(),
                data={"posters": total, "page": page})
    log.info("%s %s: %s", ev.id, step.step_id, note)
    return note


async def _draw_screenshot(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    """Wait for the committed freeze moment inside the hour's first minute, freeze the screen, draw."""
    from orchestrator import draws
    from orchestrator.screen import write_screen

    hour = step.at if step.at.tzinfo else step.at.replace(tzinfo=UTC)
    freeze_at, _offset = await rt.db(draws.freeze_moment, rt.engine, ev.id, step.step_id, hour)
    wait = clock.real_delay(freeze_at - clock.now())
    if wait > FREEZE_SLEEP:  # come back at the moment (the step stays scheduled; its time does not show the moment)
        await rt.db(_set_step_state, rt, ev.id, step.step_id, "scheduled")
        await jobs.enqueue_step(rt.pool, clock, ev.id, step.step_id, step.revision, freeze_at, suffix=":freeze")
        return "waiting for the freeze moment"
    if wait > 0:
        await asyncio.sleep(wait)  # the committed moment itself is what we wait for, not a guess
    await InStream(rt.pool).move(rt.engine, "comments", ev.id)  # every comment acknowledged before now is in the store
    ended = await rt.db(draws.live_ended_at, rt.engine, ev.id)
    made = await rt.db(draws.screenshot_draw, rt.engine, ev.id, step.step_id, hour, loaded, live_ended_at=ended)
    return await _after_draw(rt, ev, step, loaded, clock, [made], write_screen)


async def _draw_deposit(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    from orchestrator import draws
    from orchestrator.plan import plan

    planned = next(s for s in plan(loaded, ev.live_start.astimezone(loaded.playbook.tz)).steps if s.id == step.step_id)
    cutoff = datetime.fromisoformat(planned.detail["cutoff"]) if planned.detail and "cutoff" in planned.detail else planned.at
    await InStream(rt.pool).move(rt.engine, "payments", ev.id)
    made = await rt.db(draws.deposit_draws, rt.engine, ev.id, loaded, cutoff)
    return await _after_draw(rt, ev, step, loaded, clock, made, None)


async def _after_draw(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock, made: list[Any], image: Any) -> str:
    from orchestrator.poolwatch import staff_alert

    notes = []
    for m in made:
        if m.state == "void":
            notes.append(f"{m.draw_id}: void ({m.reason})")
            continue
        names = {c["user_id"]: c["name"] for c in m.screen}
        shown = "、".join(mask(names.get(w, w)) for w in m.winners)
        notes.append(f"{m.draw_id}: {len(m.winners)} winners of {m.entrants} entrants: {shown}")
        if image is not None:
            path = await rt.db(image, m, loaded, rt.settings.data_path / "draws", ev.id, rt.settings.font_path)
            notes[-1] += f"; screen {path}"
        await staff_alert(rt, ev.id, "draw", f"【开奖】{loaded.playbook.title} {step.label}：{shown}（共 {m.entrants} 人参与）",
                          {"winners": len(m.winners)})
    note = "; ".join(notes)
    await rt.db(_finish_step, rt, ev.id, step.step_id, "done", note)
    await rt.db(eventlog.record, rt.engine, ev.id, step.stage, f"{step.step_id}: {note}", step_id=step.step_id, event_time=clock.now(),
                data={"draws": [m.draw_id for m in made]})
    log.info("%s %s: %s", ev.id, step.step_id, note)
    return note


def _set_step_state(rt: Runtime, event_id: str, step_id: str, state: str, note: str | None = None) -> None:
    values: dict[str, Any] = {"state": state} | ({"note": note} if note is not None else {})
    with rt.engine.begin() as conn:
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id).values(**values))


async def _join_open(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    """The pool opens: its groups are put into Redis (scans before this also find it) and summed up."""
    join = loaded.playbook.path.join
    count = await Pool(rt.pool, rt.engine).refresh(ev.id)
    groups = await rt.db(groups_of, rt.engine, ev.id)
    if groups:
        note = f"group pool open: {count} groups, {sum(g.margin for g in groups):,} places before it runs out"
    elif join.kind == "wecom_join_way":
        note = await _wecom_join_ways(rt, ev, loaded)
    else:
        note = "group pool open without groups: add one with `orchestrator groups add`; scans show the guide's contact until then"
    await rt.db(_finish_step, rt, ev.id, step.step_id, "done", note)
    await rt.db(eventlog.record, rt.engine, ev.id, step.stage, f"{step.step_id}: {note}", step_id=step.step_id, event_time=clock.now())
    return note


async def _wecom_join_ways(rt: Runtime, ev: Event, loaded: LoadedPlaybook) -> str:
    """A WeCom join way per guide; what happened, for the step's note."""
    import aiohttp

    from orchestrator.wecom import WeComClient, WeComError
    from orchestrator.wecomjoins import open_join_ways

    s = rt.settings
    if not s.wecom_api_on:
        return "WeCom is not configured (ORCH_WECOM_CORP_ID, ORCH_WECOM_SECRET): no join ways; scans show the guide's contact"
    if not loaded.playbook.path.join.chat_ids:
        return "no WeCom chat ids in path.join.chat_ids: no join ways; scans show the guide's contact"
    async with aiohttp.ClientSession() as session:
        client = WeComClient(session, rt.pool, str(s.wecom_corp_id), str(s.wecom_secret), base_url=s.wecom_api)
        try:
            made, before = await open_join_ways(client, rt.engine, ev.id, loaded)
        except WeComError as e:
            log.log(logging.ERROR, "%s: join ways not made: %s", ev.id, e)
            return f"WeCom join ways failed: {e}; scans show the guide's contact for guides without one"
    return f"WeCom join ways: {made} made now, {before} before ({len(loaded.guides)} guides); WeCom opens the next group when one is full"


async def _close(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    from orchestrator.report import write_report

    await _let_sends_finish(rt, ev.id)
    left = await rt.db(ledger.skip_open, rt.engine, ev.id, "the event closed before it went out")
    if left:
        await rt.db(eventlog.record, rt.engine, ev.id, "close", f"{left} sends still planned at close are skipped", step_id=step.step_id)
    await rt.db(_close_open_steps, rt, ev.id)
    from orchestrator.recount import figures_from_store

    board = await figures_from_store(rt.pool, rt.engine, ev.id)
    paths = await rt.db(write_report, rt.engine, ev.id, rt.settings.data_path / "reports", "closed", board)
    # one transaction: closed means the report is there and the log says so; nothing runs after it
    await rt.db(_closed, rt, ev.id, step.step_id, f"report: {paths[0]}", clock.now(),
                {"html": str(paths[0]), "csv": str(paths[1]), "funnel_csv": str(paths[2])})
    from orchestrator.draws import write_bundle

    audit = await rt.db(write_bundle, rt.engine, ev.id, rt.settings.data_path / "audit")  # closed: the seed is revealed in it
    await rt.db(eventlog.record, rt.engine, ev.id, "audit", f"audit bundle with the revealed seed: {audit}", data={"bundle": str(audit)})
    return "closed"


async def _let_sends_finish(rt: Runtime, event_id: str) -> None:
    """Before closing, give sends in flight, retries due within the wait, and draws still to come,
    up to CLOSE_WAIT real seconds.

    On a real clock close comes well after the last reminder; on a fast rehearsal clock a fan-out
    may still be going when close is due, and it should not be cut short by compressed time.
    """
    deadline = time.monotonic() + CLOSE_WAIT
    while (left := deadline - time.monotonic()) > 0:
        if not await rt.db(ledger.sendable, rt.engine, event_id, utc_now() + timedelta(seconds=left)) \
                and not await rt.db(_draws_pending, rt, event_id):
            return
        await asyncio.sleep(min(0.5, left))


def _draws_pending(rt: Runtime, event_id: str) -> int:
    """Draw steps not done yet (a draw waits for its freeze moment): the audit bundle written at close must hold them."""
    with rt.engine.connect() as conn:
        return len(conn.execute(select(STEP.c.step_id).where(STEP.c.event_id == event_id, STEP.c.stage.in_(("draw_screenshot", "draw_deposit")),
                                                              STEP.c.state.in_(("scheduled", "running", "deferred")))).all())


def _closed(rt: Runtime, event_id: str, step_id: str, note: str, event_time: datetime, paths: dict[str, str]) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id).values(state="done", finished_at=utc_now(), note=note))
        conn.execute(update(EVENT).where(EVENT.c.id == event_id, EVENT.c.state != "cancelled").values(state="closed", updated_at=utc_now()))
        eventlog.record_in(conn, event_id, "closed", f"event closed; report {paths['html']} and {paths['csv']}", step_id=step_id,
                           event_time=event_time, data=paths)


def _close_open_steps(rt: Runtime, event_id: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.state.in_(("sending", "running")), STEP.c.step_id != "close")
                     .values(state="done", finished_at=utc_now(), note="closed with the event"))


def message_of(loaded: LoadedPlaybook, step_id: str) -> Message | None:
    pb = loaded.playbook
    if step_id == "preview":
        return pb.path.preview
    return next((r for r in pb.path.reminders if f"reminder:{r.id}" == step_id), None)


def quiet_end(q: QuietHours, moment: datetime) -> datetime:
    """The first moment after `moment` (aware, event timezone) at which the quiet window is over."""
    tz = moment.tzinfo
    assert tz is not None
    day = moment.date()
    for offset in (0, 1):
        candidate = localize(datetime.combine(day + timedelta(days=offset), q.end), tz)
        if candidate > moment:
            return candidate
    return localize(datetime.combine(day + timedelta(days=2), q.end), tz)  # pragma: no cover


async def _message(rt: Runtime, ev: Event, step: Step, loaded: LoadedPlaybook, clock: Clock) -> str:
    pb = loaded.playbook
    msg = message_of(loaded, step.step_id)
    now = moment_of(clock, step.at).astimezone(pb.tz)
    if msg is None:
        await rt.db(_finish_step, rt, ev.id, step.step_id, "skipped", "the frozen playbook has no such message")
        return "no message"
    quiet = pb.policy.quiet_hours
    if quiet is not None and msg.quiet_hours == "respect" and quiet.contains(now.timetz().replace(tzinfo=None)):
        if pb.policy.quiet_hours_action == "skip":
            note = f"skipped: {now:%H:%M} is inside quiet hours {quiet}"
            await rt.db(_finish_step, rt, ev.id, step.step_id, "skipped", note)
            await rt.db(eventlog.record, rt.engine, ev.id, "step-skipped", f"{step.step_id} {note}", step_id=step.step_id, event_time=now)
            return note
        until = quiet_end(quiet, now)
        await rt.db(_defer, rt, ev.id, step.step_id, until)
        await jobs.enqueue_step(rt.pool, clock, ev.id, step.step_id, step.revision, until, suffix=f":q{int(until.timestamp())}")
        note = f"deferred to {until:%Y-%m-%d %H:%M}: {now:%H:%M} is inside quiet hours {quiet}"
        await rt.db(eventlog.record, rt.engine, ev.id, "step-deferred", f"{step.step_id} {note}", step_id=step.step_id, event_time=now)
        return note
    routes = rt.routes(ev.mode)
    count_day = f"{step.at.astimezone(pb.tz):%Y-%m-%d}"  # caps count a message on its step's day (fanout.deliver reserves it there)
    total, added, skipped_by = await rt.db(_plan_recipients, rt, ev.id, step.step_id, msg, routes, count_day)
    skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(skipped_by.items())) or "none"
    note = f"{total} recipients; not sent: {skipped}"
    data = {"recipients": total, "planned_now": added, "skipped": dict(skipped_by)}
    if Channel.WECOM_GROUP in msg.channels:
        transport = routes[Channel.WECOM_GROUP.value]
        groups, problem = await groupposts.targets(rt, ev.id, loaded, transport)
        added = await rt.db(ledger.plan_sends, rt.engine, ev.id, step.step_id, [(g, Channel.WECOM_GROUP.value, transport) for g in groups])
        total += len(groups)
        note += f"; posted into {len(groups)} groups" if groups else "; no groups to post into yet"
        if problem:
            note += f"; {problem}"
            log.warning("%s %s: %s", ev.id, step.step_id, problem)
        data |= {"groups": len(groups), "groups_planned_now": added}
    if not total:
        await rt.db(_finish_step, rt, ev.id, step.step_id, "done", note, 0)
        await rt.db(eventlog.record, rt.engine, ev.id, "step-done", f"{step.step_id}: {note}", step_id=step.step_id, event_time=now, data=data)
        return note
    await rt.db(_sending, rt, ev.id, step.step_id, total, note)
    await rt.db(eventlog.record, rt.engine, ev.id, "fanout", f"{step.step_id}: {note}", step_id=step.step_id, event_time=now, data=data)
    for lane in range(LANES):
        await jobs.enqueue_drain(rt.pool, ev.id, step.step_id, step.revision, f"l{lane}", 0)
    return note


def _plan_recipients(rt: Runtime, event_id: str, step_id: str, msg: Message, routes: dict[str, str],
                     count_day: str) -> tuple[int, int, Counter[str]]:
    """Choose the step's recipients from the stored audience a chunk at a time and plan a ledger
    row for each, counting toward caps on `count_day`; (recipients, rows added now, people not sent
    to by reason)."""
    needs_consent = any(c in CONSENT_OF for c in msg.channels)
    total = added = 0
    skipped: Counter[str] = Counter()
    for chunk in audience.chunks(rt.engine, event_id):
        consent = consent_of(rt.engine, [p.member.id for p in chunk]) if needs_consent else {}
        chosen = select_recipients(chunk, msg, consent, optouts_of(rt.engine, [p.member for p in chunk]))
        rows = [(m.id, ch.value, routes[ch.value]) for m, ch in chosen.chosen]
        added += ledger.plan_sends(rt.engine, event_id, step_id, rows, count_day=count_day)
        total += len(rows)
        skipped.update(chosen.skipped)
    return total, added, skipped


def _defer(rt: Runtime, event_id: str, step_id: str, until: datetime) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id).values(state="deferred", at=until, note="deferred by quiet hours"))


def _sending(rt: Runtime, event_id: str, step_id: str, audience: int, note: str) -> None:
    with rt.engine.begin() as conn:
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id).values(state="sending", audience=audience, note=note))


HANDLERS: dict[str, Handler] = {
    "preview": _message,
    "reminder": _message,
    "live_start": _live,
    "live_end": _live,
    "join_open": _join_open,
    "poster": _posters,
    "draw_screenshot": _draw_screenshot,
    "draw_deposit": _draw_deposit,
    "close": _close,
}
