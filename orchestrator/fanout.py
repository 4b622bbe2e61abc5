"""Draining a message step: claim planned sends in batches, check, render, send, record.

A drain job works for at most `BUDGET` seconds (arq's timeout stays short, so a crashed job
comes back within a minute), then hands over to its successor if rows remain. Each batch:
opt-outs are read again (an opt-out takes effect before the next send), caps are reserved,
copy is rendered per person, the channel's rate limit is waited for, the batch goes out
concurrently, and all outcomes are written in one statement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from orchestrator import audience, eventlog, groupposts, jobs, ledger
from orchestrator.channels.base import Outcome, Outgoing, backoff
from orchestrator.clock import Clock
from orchestrator.eligibility import OptOuts, address_of, optouts_of
from orchestrator.errors import UnknownEvent
from orchestrator.funnel import Funnel, Seen
from orchestrator.ledger import Claimed, Result
from orchestrator.limits import periods
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import Channel, Member
from orchestrator.render import step_renderer
from orchestrator.runtime import Runtime
from orchestrator.scheduling import STEP, event_clock, get_event, loaded_event
from orchestrator.store import Event, one_trip, reading, utc_now

log = logging.getLogger("orchestrator.worker")
BUDGET = 15.0  # seconds of work per drain job: no new batch is claimed after it
HARD_STOP = 33.0  # seconds into a drain job after which a batch stops waiting for rate-limit tokens and gives its rows back (JOB_TIMEOUT is 45)
BATCH = 200
MAX_ATTEMPTS = 5


async def drain(ctx: dict[str, Any], event_id: str, step_id: str, revision: int, lane: str, generation: int) -> str:
    rt: Runtime = ctx["rt"]
    try:
        ev = await rt.db(get_event, rt.engine, event_id)
    except UnknownEvent:
        return "no such event"
    if ev.state in ("cancelled", "closed") or ev.revision < revision:
        return f"event {ev.state}"
    loaded = await rt.db(loaded_event, rt.engine, ev, members=False)
    clock = event_clock(ev)
    due = await rt.db(step_time, rt.engine, event_id, step_id)
    began = time.monotonic()
    deadline = began + BUDGET
    sent = 0
    full = False
    after = 0  # the last id this job claimed: each claim goes on from there (ledger.claim)
    while True:
        if time.monotonic() >= min(deadline, began + HARD_STOP):
            full = True
            break
        batch = await rt.db(claim_batch, rt, event_id, step_id, periods(due.astimezone(loaded.playbook.tz)), after)
        if not batch.claimed:
            break
        after = batch.claimed[-1].id
        sent += await send_batch(rt, ev, loaded, due, step_id, batch, until=began + HARD_STOP)
    if full:  # out of time with rows still coming: the successor goes on at once (and, finding none, ends the step)
        await jobs.enqueue_drain(rt.pool, event_id, step_id, revision, lane, generation + 1, 0.0)
        return f"{sent} sent"
    # nothing left to claim now: what is still open decides (one read of the step's rows, so only here:
    # at 100,000 recipients a few tens of milliseconds of the database's time)
    planned, sending, earliest = await rt.db(ledger.open_rows, rt.engine, event_id, step_id)
    if planned:
        delay = 0.0 if earliest is None else max(0.0, (earliest - utc_now()).total_seconds())
        await jobs.enqueue_drain(rt.pool, event_id, step_id, revision, lane, generation + 1, delay)
    elif not sending:
        await finish_step(rt, ev, step_id, clock)
    return f"{sent} sent"


async def finish_step(rt: Runtime, ev: Event, step_id: str, clock: Clock) -> None:
    """Close the step once (whichever lane sees it empty first) and log its outcome."""
    def close() -> bool:
        with rt.engine.begin() as conn:
            return bool(conn.execute(update(STEP).where(STEP.c.event_id == ev.id, STEP.c.step_id == step_id, STEP.c.state == "sending")
                                     .values(state="done", finished_at=utc_now())).rowcount)
    if await rt.db(close):
        counts = await rt.db(ledger.step_counts, rt.engine, ev.id)
        totals: Counter[str] = Counter()
        for states in counts.get(step_id, {}).values():
            totals.update(states)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(totals.items()))
        await rt.db(eventlog.record, rt.engine, ev.id, "step-done", f"{step_id} done: {summary}", step_id=step_id,
                    event_time=clock.now(), data=dict(totals))
        log.info("%s %s done: %s", ev.id, step_id, summary)


@dataclass(frozen=True, slots=True)
class Batch:
    """Claimed rows and what checking them needs, read in one trip off the event loop."""

    claimed: list[Claimed]
    people: dict[str, Member]  # the claimed people as the stored audience has them
    optouts: OptOuts  # every opt-out touching them
    stored: dict[tuple[str, str], int]  # their rows counted toward caps in the caps' day and month (ledger.counts_of: seeds for Redis)


def claim_batch(rt: Runtime, event_id: str, step_id: str, caps_periods: tuple[str, str], after: int = 0) -> Batch:
    """Claim the next batch after id `after` (committed at once) and read its people, their
    opt-outs and what the store counts toward their caps, all on one connection."""
    with one_trip(rt.engine) as conn:
        claimed = ledger.claim(conn, event_id, step_id, rt.worker_id, BATCH, after)
        if not claimed:
            return Batch([], {}, OptOuts({}, {}), {})
        return checked_batch(conn, event_id, claimed, caps_periods)


def checked_batch(bind: Engine | Connection, event_id: str, claimed: list[Claimed], caps_periods: tuple[str, str]) -> Batch:
    """What checking `claimed` needs: their people, opt-outs and counts stored in the caps' periods."""
    with reading(bind) as conn:
        people = {member_id: p.member for member_id, p in audience.people(conn, event_id, [c.member_id for c in claimed]).items()}
        persons = [c.member_id for c in claimed if c.channel != Channel.WECOM_GROUP.value and c.member_id in people]
        return Batch(claimed, people, optouts_of(conn, [people[m] for m in persons]), ledger.counts_of(conn, persons, caps_periods))


def step_time(engine: Engine, event_id: str, step_id: str) -> datetime:
    """The step's time (its day and month are what its messages count toward caps)."""
    with engine.connect() as conn:
        at: datetime = conn.execute(select(STEP.c.at).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id)).scalar_one()
    return at


async def send_batch(rt: Runtime, ev: Event, loaded: LoadedPlaybook, due: datetime, step_id: str, batch: Batch,
                     until: float | None = None) -> int:
    """Send one claimed batch and record every outcome in the ledger (one statement); returns how
    many were sent. Rows not tried in time (see `deliver`) are given back."""
    done = await deliver(rt, ev, loaded, due, step_id, batch, until)
    await rt.db(ledger.finish, rt.engine, rt.worker_id, done.results)
    if done.given_back:
        await rt.db(ledger.give_back, rt.engine, rt.worker_id, ev.id, done.given_back)
        log.info("%s %s: %d sends wait for the next drain (the channel's rate limit outlasted this job)", ev.id, step_id, len(done.given_back))
    return done.sent


@dataclass(frozen=True, slots=True)
class Delivered:
    """What `deliver` did with a batch, for the ledger to record."""

    results: list[Result]  # an outcome per row tried or refused (those in ledger.COUNTED count toward caps)
    given_back: list[int]  # rows not tried: the channel's rate limit outlasted the job
    sent: int  # messages counted toward caps


async def deliver(rt: Runtime, ev: Event, loaded: LoadedPlaybook, due: datetime, step_id: str, batch: Batch,
                  until: float | None = None) -> Delivered:
    """Check, render and send one batch; writes nothing to the store (the caller records it).

    Caps count the message on the day and month of its step's time (`due`), whatever the clock.
    Messages a channel's rate limit would only let out after `until` (time.monotonic()) are not
    sent: they come back in `given_back`, so a job never outlives its timeout.
    """
    pb = loaded.playbook
    now = due.astimezone(pb.tz)
    results: list[Result] = []
    claimed, people, optouts = batch.claimed, batch.people, batch.optouts
    posts = [c for c in claimed if c.channel == Channel.WECOM_GROUP.value]  # into groups: no person, no opt-out, no cap
    claimed = [c for c in claimed if c.channel != Channel.WECOM_GROUP.value]
    members = {c.id: people.get(c.member_id) for c in claimed}
    live = [c for c in claimed if members[c.id] is not None]
    results += [Result(c.id, "failed", error="member not in the frozen audience") for c in claimed if members[c.id] is None]
    ready: list[Claimed] = []
    for c in live:
        m = members[c.id]
        assert m is not None
        if optouts.blocks(m, c.channel):
            results.append(Result(c.id, "skipped", error="opted out"))
        else:
            ready.append(c)
    caps = pb.policy.caps
    granted = await rt.caps.reserve([c.member_id for c in ready], now, caps.per_day, caps.per_month, stored=batch.stored)
    reserved: list[Claimed] = []
    for c, ok in zip(ready, granted, strict=True):
        if ok:
            reserved.append(c)
        else:
            results.append(Result(c.id, "skipped", error=f"cap reached ({caps.per_day} a day, {caps.per_month} a month)"))
    outgoing, failed = await rt.db(prepare, loaded, ev, step_id, reserved, members, posts)  # rendering is CPU work: off the event loop
    results += failed
    rates = pb.policy.rate_limits
    sent_members: list[str] = []
    delivered: list[str] = []
    given_back: list[int] = []
    for transport_name, items in outgoing.items():
        transport = rt.transports.get(transport_name)
        if transport is None:
            results += [Result(c.id, "planned", error=f"transport '{transport_name}' is not configured on worker {rt.worker_id}",
                               not_before=utc_now() + timedelta(seconds=30)) for c, _m in items]
            continue
        for channel_name, group in _by_channel(items).items():
            rate = rates.get(Channel(channel_name)) if transport_name != "console" else None  # limits protect real peers
            calls = getattr(transport, "calls", None)  # a transport whose one call carries many messages (a WeCom task per guide)
            size = len(group) if calls is not None or not rate else int(rate)
            for i in range(0, len(group), size):
                chunk = group[i:i + size]
                if rate and not await rt.limiter.acquire(channel_name, calls([m for _c, m in chunk]) if calls is not None else len(chunk),
                                                         float(rate), until=until):
                    given_back += [c.id for c, _m in group[i:]]
                    break
                outcomes = await transport.send_batch([m for _c, m in chunk])
                for (c, _m), outcome in zip(chunk, outcomes, strict=True):
                    results.append(result_of(c, outcome))
                    if outcome.state in ledger.COUNTED and c.channel != Channel.WECOM_GROUP.value:  # counted toward caps now; reminded once delivered
                        sent_members.append(c.member_id)
                        if outcome.state == "sent":
                            delivered.append(c.member_id)
    sent_ids = {r.id for r in results if r.state in ledger.COUNTED}
    # caps not used are given back; the board's funnel counts reminded (delivered), once per person
    await asyncio.gather(rt.caps.release([c.member_id for c in reserved if c.id not in sent_ids], now),
                         Funnel(rt.pool, rt.pipe).count(ev.id, "reminded", [Seen(m) for m in delivered]))
    return Delivered(results, given_back, len(sent_members))


def prepare(loaded: LoadedPlaybook, ev: Event, step_id: str, reserved: list[Claimed], members: dict[int, Member | None],
            posts: Sequence[Claimed] = ()) -> tuple[dict[str, list[tuple[Claimed, Outgoing]]], list[Result]]:
    """Render each claimed send for its person, and the one text of the group posts: messages by
    transport, and rows whose copy or address fails."""
    outgoing: dict[str, list[tuple[Claimed, Outgoing]]] = defaultdict(list)
    failed: list[Result] = []
    renderer = step_renderer(loaded, step_id, ev.live_start)
    if posts:
        try:
            text = renderer.group_text()
        except Exception as e:  # broken copy: every post of it fails, recorded
            failed += [Result(c.id, "failed", error=f"copy failed: {e}"[:500]) for c in posts]
        else:
            for c in posts:
                outgoing[c.transport].append((c, Outgoing(c.key, ev.id, step_id, c.member_id, c.channel, c.member_id, text,
                                                          groupposts.address(c.member_id))))
    senders = {g.id: g.wecom_userid for g in loaded.guides if g.wecom_userid}
    for c in reserved:
        m = members[c.id]
        assert m is not None
        channel = Channel(c.channel)
        if address_of(m, channel) is None:
            failed.append(Result(c.id, "failed", error=f"no {channel.value} address"))
            continue
        try:
            r = renderer.render(m, channel)
        except Exception as e:  # broken copy for this person: a permanent failure, recorded
            failed.append(Result(c.id, "failed", error=f"copy failed: {e}"[:500]))
            continue
        address = {k: v for k, v in (("phone", m.phone), ("email", m.email), ("wecom_external_userid", m.wecom_external_userid)) if v}
        extra: dict[str, Any] = ({"sms_template": r.sms_template, "sms_params": r.sms_params, "sms_sign": r.sms_sign}
                                 if r.sms_template else {})
        if channel is Channel.WECOM_CUSTOMER:  # the task goes out from the member's guide
            extra["wecom_sender"] = senders.get(m.guide or "")
        outgoing[c.transport].append((c, Outgoing(c.key, ev.id, step_id, m.id, c.channel, m.name, r.text, address, r.subject, r.html, extra)))
    return outgoing, failed


def _by_channel(items: list[tuple[Claimed, Outgoing]]) -> dict[str, list[tuple[Claimed, Outgoing]]]:
    out: dict[str, list[tuple[Claimed, Outgoing]]] = defaultdict(list)
    for item in items:
        out[item[0].channel].append(item)
    return out


def result_of(c: Claimed, outcome: Outcome) -> Result:
    if outcome.state in ("sent", "created"):
        return Result(c.id, outcome.state, provider_id=outcome.provider_id, sender=outcome.sender)
    if outcome.state == "unknown":
        return Result(c.id, "unknown", error=outcome.error)
    if outcome.state == "retry" and c.attempts < MAX_ATTEMPTS:
        return Result(c.id, "planned", error=outcome.error, not_before=utc_now() + timedelta(seconds=backoff(c.attempts, outcome.retry_after)))
    return Result(c.id, "failed", error=outcome.error)
