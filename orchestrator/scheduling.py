"""Schedule, reschedule, cancel and inspect events: the playbook becomes rows and deferred jobs.

Scheduling freezes the playbook with its files (an edit afterwards changes nothing that runs),
stores the timeline, the audience and its consent, and defers one arq job per step. Scheduling
the same files for the same start again changes nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from orchestrator import draws, eventlog, jobs, ledger, smsreceipts
from orchestrator.bundle import Bundle, freeze, thaw
from orchestrator.channels.registry import missing_routes, routes
from orchestrator.clock import Clock
from orchestrator.errors import EventConflict, OrchestratorError, PlaybookError, UnknownEvent
from orchestrator.load import LoadedPlaybook
from orchestrator.plan import Plan, localize, plan
from orchestrator.pool import BadGroup, group_values
from orchestrator.playbook import PER_MEMBER_CHANNELS, Channel
from orchestrator.reach import is_excluded
from orchestrator.settings import Settings
from orchestrator.store import ChatGroup, Consent, Event, FrozenPlaybook, Guide, Member, ScanCode, Step, utc_now
from orchestrator.validate import check, validate

MEMBER = Member.__table__  # type: ignore[attr-defined]
GUIDE = Guide.__table__  # type: ignore[attr-defined]
SCANCODE = ScanCode.__table__  # type: ignore[attr-defined]
GROUP = ChatGroup.__table__  # type: ignore[attr-defined]
CONSENT = Consent.__table__  # type: ignore[attr-defined]
STEP = Step.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
FROZEN = FrozenPlaybook.__table__  # type: ignore[attr-defined]
REHEARSAL_LEAD = 2.0  # real seconds between scheduling a rehearsal and its first step
OPEN_STEP_STATES = ("scheduled", "deferred", "continuing")  # not run yet, or to go on in the next try of its job


@dataclass(frozen=True)
class Scheduled:
    event_id: str
    created: bool
    steps: int
    jobs: int
    playbook_hash: str
    clock: Clock
    audience: int


def event_clock(ev: Event) -> Clock:
    return Clock(ev.speed, ev.real_origin, ev.virtual_origin)


def used_channels(loaded: LoadedPlaybook) -> set[str]:
    pb = loaded.playbook
    msgs = ([pb.path.preview] if pb.path.preview else []) + list(pb.path.reminders)
    return {c.value for m in msgs for c in m.channels if c in PER_MEMBER_CHANNELS}


def get_event(engine: Engine, event_id: str) -> Event:
    with Session(engine) as s:
        ev = s.get(Event, event_id)
        if ev is None:
            known = [e for (e,) in s.exec(select(Event.id).order_by(Event.created_at.desc()).limit(10))]  # type: ignore[call-overload, attr-defined]
            hint = f"; known events: {', '.join(known)}" if known else "; nothing is scheduled yet"
            raise UnknownEvent(f"no event '{event_id}'{hint}")
        s.expunge(ev)
        return ev


def loaded_event(engine: Engine, ev: Event, *, members: bool = True) -> LoadedPlaybook:
    """The event's frozen playbook, loaded (once per process: a frozen playbook never changes).

    Workers pass `members=False` and read the audience from the store (`audience`).
    """
    return thaw(ev.playbook_hash, ev.entry, lambda: _bundle_bytes(engine, ev.id), members=members)


def _bundle_bytes(engine: Engine, event_id: str) -> bytes:
    with engine.connect() as conn:
        data: bytes = conn.execute(select(FROZEN.c.bundle).where(FROZEN.c.event_id == event_id)).scalar_one()
    return data


async def schedule(engine: Engine, pool: ArqRedis, settings: Settings, path: str | Path, start: datetime | None = None, *,
                   event_id: str | None = None, speed: float | None = None, rehearsal: bool = False,
                   clock_from: datetime | None = None) -> Scheduled:
    """Schedule the playbook at `path`; PlaybookError with every diagnostic if it is not valid.

    With `speed`, the event runs on an accelerated clock that starts just before the first step,
    or at `clock_from` (rehearse only the live, say; earlier steps are then late and follow the
    playbook's late-step policy).
    """
    loaded, diags = check(path, start)
    errors = [d for d in diags if d.is_error]
    if loaded is None or errors:
        raise PlaybookError(errors)
    mode = "rehearsal" if rehearsal else "live"
    problems = missing_routes(settings, mode, used_channels(loaded))
    if problems:
        raise EventConflict("; ".join(problems))
    if routes(settings, mode).get(Channel.SMS.value) == "aliyun_sms" and Channel.SMS.value in used_channels(loaded):
        from orchestrator import smstemplates

        unusable = await smstemplates.check(settings, loaded)  # an unknown or unapproved template fails now, not at the send
        if unusable:
            raise PlaybookError(unusable)
    bundle = freeze(path, loaded)
    p = plan(loaded, start)
    eid = event_id or loaded.playbook.id
    digest = bundle.hash
    with Session(engine) as s:
        existing = s.get(Event, eid)
        if existing is not None:
            s.expunge(existing)
    if existing is not None:
        return await _again(engine, pool, existing, digest, p)
    clock = Clock.real()
    if clock_from is not None and speed is None:
        raise EventConflict("a clock start (--clock-from) needs an accelerated clock (--speed)")
    if speed is not None:
        origin = localize(clock_from, loaded.playbook.tz) if clock_from else p.steps[0].at - timedelta(seconds=REHEARSAL_LEAD * speed)
        clock = Clock.accelerated(speed, origin, time.time())
    members = _store_event(engine, eid, loaded, bundle, digest, p, clock, mode)
    if not clock.is_real:  # the accelerated clock starts now, after the store work, not before it
        clock = Clock(clock.speed, time.time(), clock.virtual_origin)
        with engine.begin() as conn:
            conn.execute(update(EVENT).where(EVENT.c.id == eid).values(real_origin=clock.real_origin))
    count = await _enqueue_open_steps(engine, pool, eid)
    from orchestrator.funnel import Funnel
    from orchestrator.notice import notice_text, write_notice

    await Funnel(pool).clear(eid)  # an id used before (rehearsals) starts from nothing
    await Funnel(pool).set_reached(eid, members)
    promise = draws.commitment_of(engine, eid) or {}
    notice = write_notice(settings.data_path / "notices", eid,
                          notice_text(loaded, eid, p.live_start, promise.get("commitment", ""), promise.get("rules_hash", "")))
    eventlog.record(engine, eid, "scheduled", f"scheduled {loaded.playbook.title!r} ({mode}), live {p.live_start:%Y-%m-%d %H:%M} {p.timezone}; "
                    f"{len(p.steps)} steps, {members} people, playbook {digest[:12]}; draw commitment {promise.get('commitment', '')[:16]}…, "
                    f"notice {notice}",
                    data={"hash": digest, "speed": clock.speed, "mode": mode, "start": p.live_start.isoformat(),
                          "commitment": promise.get("commitment"), "notice": str(notice)})
    return Scheduled(eid, True, len(p.steps), count, digest, clock, p.audience_total)


async def _again(engine: Engine, pool: ArqRedis, ev: Event, digest: str, p: Plan) -> Scheduled:
    if ev.state == "cancelled":
        raise EventConflict(f"event '{ev.id}' was cancelled; schedule the playbook under another id (--as NAME)")
    if ev.playbook_hash != digest:
        raise EventConflict(
            f"event '{ev.id}' is already scheduled with a different playbook (hash {ev.playbook_hash[:12]}, this one {digest[:12]}); "
            f"cancel it first, or schedule this one under another id (--as NAME)"
        )
    if ev.live_start != p.live_start:
        raise EventConflict(f"event '{ev.id}' is scheduled for {ev.live_start.astimezone(p.live_start.tzinfo):%Y-%m-%d %H:%M}; "
                            f"use `orchestrator reschedule {ev.id} --start ...` to move it")
    count = await _enqueue_open_steps(engine, pool, ev.id)  # restores jobs a lost Redis forgot; existing ids are no-ops
    with Session(engine) as s:
        steps = len(s.exec(select(Step.step_id).where(Step.event_id == ev.id)).all())  # type: ignore[call-overload]
    return Scheduled(ev.id, False, steps, count, digest, event_clock(ev), ev.audience)


def notice_of(engine: Engine, event_id: str) -> str:
    """The 公示 notice of a scheduled event, from its frozen playbook and its commitment."""
    from orchestrator.notice import notice_text

    ev = get_event(engine, event_id)
    promise = draws.commitment_of(engine, event_id)
    if promise is None:
        raise draws.DrawError(f"event {event_id} has no draw commitment")
    return notice_text(loaded_event(engine, ev, members=False), event_id, ev.live_start, promise["commitment"], promise["rules_hash"])


def _insert(engine: Engine) -> Any:
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def _store_event(engine: Engine, eid: str, loaded: LoadedPlaybook, bundle: Bundle, digest: str, p: Plan, clock: Clock, mode: str) -> int:
    pb = loaded.playbook
    ex = loaded.excluded
    ids = {e.id for e in ex}
    phones = {e.phone for e in ex if e.phone}
    wecom = {e.wecom_external_userid for e in ex if e.wecom_external_userid}
    roles = {e.id: e.role for e in ex}
    now = utc_now()
    join = pb.path.join
    try:  # checked before anything is stored
        groups = [group_values(code.name, (loaded.base / code.image).read_bytes(), capacity=join.capacity, margin=join.margin,
                               expires_at=localize(code.expires, pb.tz), where=code.image)
                  for code in (join.codes if join.kind == "wechat_group_codes" else [])]
    except BadGroup as e:
        raise OrchestratorError(f"{loaded.file}: path.join.codes: {e}") from e
    with engine.begin() as conn:
        conn.execute(insert(EVENT).values(
            id=eid, playbook_id=pb.id, title=pb.title, entry=bundle.entry, playbook_hash=digest,
            timezone=pb.timezone, live_start=p.live_start, live_end=p.live_end, state="scheduled", mode=mode, revision=1,
            speed=clock.speed, real_origin=clock.real_origin, virtual_origin=clock.virtual_origin, audience=p.audience_total,
            board_key=secrets.token_urlsafe(12), created_at=now, updated_at=now,
        ))
        conn.execute(insert(FROZEN).values(event_id=eid, playbook_hash=digest, bundle=bundle.to_bytes()))
        draws.commit(conn, eid, pb)
        conn.execute(insert(STEP), [
            {"event_id": eid, "step_id": st.id, "stage": st.stage.value, "label": st.label, "at": st.at, "state": "scheduled",
             "revision": 1, "audience": st.audience, "note": None, "started_at": None, "finished_at": None}
            for st in p.steps
        ])
        rows = []
        for m in loaded.members.values():
            excluded = roles.get(m.id) or ("staff" if is_excluded(m, ids, phones, wecom) else None)
            segments = [m.segment, *sorted(loaded.segments_of(m) - {m.segment})]
            rows.append({"event_id": eid, "member_id": m.id, "name": m.name, "segments": "|".join(segments),
                         "phone": m.phone, "email": m.email, "wecom_external_userid": m.wecom_external_userid, "guide": m.guide,
                         "excluded": excluded, "tags": json.dumps(list(m.tags), ensure_ascii=False) if m.tags else None})
        for i in range(0, len(rows), 5000):
            conn.execute(insert(MEMBER), rows[i:i + 5000])
        if loaded.guides:
            conn.execute(insert(GUIDE), [{"event_id": eid, "guide_id": g.id, "name": g.name, "channel_code": g.channel_code,
                                          "wecom_userid": g.wecom_userid, "contact_code": g.contact_code} for g in loaded.guides])
            conn.execute(insert(SCANCODE), [{"code": new_scan_code(), "event_id": eid, "guide_id": g.id, "variant": v.id}
                                            for g in loaded.guides for v in pb.path.poster.variants])
        if groups:
            conn.execute(insert(GROUP), [{"event_id": eid, "number": i, **g} for i, g in enumerate(groups, 1)])
    _import_consent(engine, loaded, now)
    return len(rows)


def new_scan_code() -> str:
    """A poster's scan code: 10 unguessable characters, easy to read out and to type."""
    return secrets.token_hex(5)


def _import_consent(engine: Engine, loaded: LoadedPlaybook, now: datetime) -> None:
    """The audience's consent joins the global record; a newer statement already stored wins."""
    ins = _insert(engine)
    tz = loaded.playbook.tz
    rows = []
    for m in loaded.members.values():
        at = localize(m.consent_at, tz) if m.consent_at else now
        for channel, granted in (("sms", m.consent_sms), ("email", m.consent_email), ("wecom", m.consent_wecom)):
            rows.append({"member_id": m.id, "channel": channel, "granted": granted, "source": m.consent_source or f"playbook {loaded.playbook.id}", "at": at})
    stmt = ins(CONSENT)
    stmt = stmt.on_conflict_do_update(
        index_elements=["member_id", "channel"],
        set_={"granted": stmt.excluded.granted, "source": stmt.excluded.source, "at": stmt.excluded.at},
        where=(CONSENT.c.at.is_(None)) | (CONSENT.c.at <= stmt.excluded.at),
    )
    with engine.begin() as conn:
        for i in range(0, len(rows), 10000):
            conn.execute(stmt, rows[i:i + 10000])  # one statement, many rows (executemany)


async def _enqueue_open_steps(engine: Engine, pool: ArqRedis, eid: str) -> int:
    ev = get_event(engine, eid)
    clock = event_clock(ev)
    with engine.connect() as conn:
        steps = conn.execute(select(STEP.c.step_id, STEP.c.at, STEP.c.revision).where(STEP.c.event_id == eid, STEP.c.state.in_(OPEN_STEP_STATES))).all()
    count = 0
    for step_id, at, revision in steps:
        count += await jobs.enqueue_step(pool, clock, eid, step_id, revision, at)
    return count


async def reschedule(engine: Engine, pool: ArqRedis, event_id: str, start: datetime) -> dict[str, Any]:
    """Move what has not run to the timeline of a new live start; what ran stays as it was."""
    ev = get_event(engine, event_id)
    if ev.state in ("cancelled", "closed"):
        raise EventConflict(f"event '{event_id}' is {ev.state}; it cannot be rescheduled")
    loaded = loaded_event(engine, ev)
    diags = [d for d in validate(loaded, start) if d.is_error]
    if diags:
        raise PlaybookError(diags)
    p = plan(loaded, start)
    revision = ev.revision + 1
    by_id = {s.id: s for s in p.steps}
    moved = 0
    with engine.begin() as conn:
        current = {r.step_id: r for r in conn.execute(select(STEP).where(STEP.c.event_id == event_id)).all()}
        for step_id, row in current.items():
            if row.state not in OPEN_STEP_STATES:
                continue
            new = by_id.get(step_id)
            if new is None:
                conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id).values(state="cancelled", note="not in the new timeline"))
            else:
                conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == step_id).values(at=new.at, revision=revision, state="scheduled"))
                moved += 1
        for st in p.steps:
            if st.id not in current:
                conn.execute(insert(STEP).values(event_id=event_id, step_id=st.id, stage=st.stage.value, label=st.label, at=st.at,
                                                 state="scheduled", revision=revision, audience=st.audience))
                moved += 1
        conn.execute(update(EVENT).where(EVENT.c.id == event_id).values(revision=revision, live_start=p.live_start, live_end=p.live_end, updated_at=utc_now()))
    await jobs.drop_jobs(pool, f"step:{event_id}:")
    await _enqueue_open_steps(engine, pool, event_id)
    eventlog.record(engine, event_id, "rescheduled", f"rescheduled: live {p.live_start:%Y-%m-%d %H:%M}; {moved} steps moved",
                    data={"start": p.live_start.isoformat(), "revision": revision})
    return {"event": event_id, "moved": moved, "revision": revision, "live_start": p.live_start.isoformat()}


async def cancel(engine: Engine, pool: ArqRedis, event_id: str) -> dict[str, Any]:
    """Stop everything that has not run; sends already made stay recorded."""
    ev = get_event(engine, event_id)
    if ev.state == "cancelled":
        return {"event": event_id, "already": True, "steps": 0, "sends": 0}
    if ev.state == "closed":
        raise EventConflict(f"event '{event_id}' is closed; there is nothing left to cancel")
    with engine.begin() as conn:
        conn.execute(update(EVENT).where(EVENT.c.id == event_id).values(state="cancelled", updated_at=utc_now()))
        steps = conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.state.in_(OPEN_STEP_STATES + ("running", "sending")))
                             .values(state="cancelled")).rowcount or 0
    sends = ledger.skip_open(engine, event_id, "cancelled")
    dropped = await jobs.drop_jobs(pool, f"step:{event_id}:") + await jobs.drop_jobs(pool, f"drain:{event_id}:")
    eventlog.record(engine, event_id, "cancelled", f"cancelled: {steps} steps stopped, {sends} planned sends skipped, {dropped} jobs dropped")
    return {"event": event_id, "already": False, "steps": steps, "sends": sends}


def status(engine: Engine, event_id: str) -> dict[str, Any]:
    """The event, each step with its state and send counts, and sends whose outcome is unknown."""
    ev = get_event(engine, event_id)
    counts = ledger.step_counts(engine, event_id)
    receipts = smsreceipts.delivery(engine, event_id)
    with engine.connect() as conn:
        steps = conn.execute(select(STEP).where(STEP.c.event_id == event_id).order_by(STEP.c.at, STEP.c.step_id)).all()
    clock = event_clock(ev)
    return {
        "event": ev.id, "title": ev.title, "state": ev.state, "mode": ev.mode, "playbook_hash": ev.playbook_hash,
        "timezone": ev.timezone, "live_start": ev.live_start.isoformat(), "live_end": ev.live_end.isoformat(),
        "clock": {"speed": clock.speed, "now": clock.now().isoformat()}, "audience": ev.audience, "revision": ev.revision,
        "steps": [
            {"id": s.step_id, "stage": s.stage, "at": s.at.isoformat(), "state": s.state, "label": s.label, "note": s.note,
             "sends": _totals(counts.get(s.step_id, {})), "channels": counts.get(s.step_id, {}), "sms_receipts": receipts.get(s.step_id, {})}
            for s in steps
        ],
        "welcomes": _totals(counts.get("welcome", {})),
        "draws": {**(draws.commitment_of(engine, event_id) or {}), "made": draws.summaries(engine, event_id)},
        "board_key": ev.board_key,
        "unknown": ledger.unknown_rows(engine, event_id),
        "undelivered": smsreceipts.undelivered(engine, event_id),
    }


def _totals(channels: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for states in channels.values():
        for state, n in states.items():
            out[state] = out.get(state, 0) + n
    return out

