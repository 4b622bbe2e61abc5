"""The draws of an event: the commitment at scheduling, each draw when its step comes, the audit bundle.

The arithmetic is in `drawproof` (standard library only); this module chooses the entrants from
the store, records every draw with what is needed to check it, and writes the bundle in which the
seed is revealed once the event has closed. A draw is never silently drawn again: a disqualified
winner's place is drawn as a new draw linked to the first (`redraw_of`), from the same seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from orchestrator import drawproof
from orchestrator.errors import OrchestratorError
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import Playbook
from orchestrator.store import Comment, Draw, DrawSeed, Event, Payment, utc_now

SEED = DrawSeed.__table__  # type: ignore[attr-defined]
DRAW = Draw.__table__  # type: ignore[attr-defined]
COMMENT = Comment.__table__  # type: ignore[attr-defined]
PAYMENT = Payment.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
BUNDLE_VERSION = 1


class DrawError(OrchestratorError):
    """A draw cannot be made or redrawn as asked (unknown draw, a winner not in it, ...)."""


def rules_of(pb: Playbook) -> dict[str, Any]:
    """What the commitment freezes: the draw rules and the prizes, as plain JSON."""
    m = pb.mechanism
    return {"event": pb.id, "live": {"start": pb.path.live.start.isoformat(), "end": pb.path.live.end.isoformat(), "timezone": pb.timezone},
            "prizes": [p.model_dump(mode="json") for p in m.prizes],
            "screenshot_draw": m.screenshot_draw.model_dump(mode="json") if m.screenshot_draw else None,
            "deposit_draw": m.deposit_draw.model_dump(mode="json") if m.deposit_draw else None}


def commit(conn: Connection, event_id: str, pb: Playbook) -> str:
    """Make and store the event's seed and commitment (inside the scheduling transaction); the commitment."""
    seed = drawproof.new_seed()
    rules = rules_of(pb)
    digest = drawproof.rules_hash(rules)
    promise = drawproof.commitment(seed, digest)
    conn.execute(insert(SEED).values(event_id=event_id, seed=seed, rules=drawproof.canonical(rules).decode(), rules_hash=digest,
                                     commitment=promise, created_at=utc_now()))
    return promise


def commitment_of(engine: Engine, event_id: str) -> dict[str, str] | None:
    with engine.connect() as conn:
        row = conn.execute(select(SEED.c.commitment, SEED.c.rules_hash, SEED.c.beacon).where(SEED.c.event_id == event_id)).first()
    return None if row is None else {"commitment": row.commitment, "rules_hash": row.rules_hash, "beacon": row.beacon or ""}


def _seed(conn: Connection, event_id: str) -> tuple[str, str]:
    row = conn.execute(select(SEED.c.seed, SEED.c.beacon).where(SEED.c.event_id == event_id)).first()
    if row is None:
        raise DrawError(f"event {event_id} has no draw commitment")
    return row.seed, row.beacon or ""


def set_beacon(engine: Engine, event_id: str, round_number: int, randomness: str) -> str:
    """Mix a public randomness value (a drand round) into every draw still to come; before the first draw only."""
    import re

    if not re.fullmatch(r"[0-9a-f]{64}", randomness):
        raise DrawError("the beacon's randomness is 64 lower-case hex characters (a drand round's 'randomness')")
    if round_number < 1:
        raise DrawError("the beacon's round is a positive number")
    with engine.begin() as conn:
        if conn.execute(select(DRAW.c.draw_id).where(DRAW.c.event_id == event_id).limit(1)).first() is not None:
            raise DrawError(f"event {event_id} has drawn already: a beacon can only be set before the first draw")
        value = f"drand:{round_number}:{randomness}"
        if not conn.execute(SEED.update().where(SEED.c.event_id == event_id).values(beacon=value)).rowcount:
            raise DrawError(f"event {event_id} has no draw commitment")
    return value


def set_live_ended(engine: Engine, event_id: str, at: datetime) -> int:
    """The live ended at `at`, before its plan: screenshot draws after it will be void. Draws made already stay."""
    with engine.begin() as conn:
        if not conn.execute(SEED.update().where(SEED.c.event_id == event_id).values(live_ended_at=at)).rowcount:
            raise DrawError(f"event {event_id} has no draw commitment")
        return len(conn.execute(select(DRAW.c.draw_id).where(DRAW.c.event_id == event_id, DRAW.c.freeze_at > at)).all())


def live_ended_at(engine: Engine, event_id: str) -> datetime | None:
    with engine.connect() as conn:
        value: datetime | None = conn.execute(select(SEED.c.live_ended_at).where(SEED.c.event_id == event_id)).scalar_one_or_none()
    return value


# --- entrants ----------------------------------------------------------------------------------


def excluded_ids(loaded: LoadedPlaybook) -> set[str]:
    """Staff and shill accounts by every id they are known by."""
    out: set[str] = set()
    for e in loaded.excluded:
        out |= {e.id, *e.live_ids} | ({e.wecom_external_userid} if e.wecom_external_userid else set())
    return out


def _earlier_winners(conn: Connection, event_id: str, kind: str) -> set[str]:
    found: set[str] = set()
    for (w,) in conn.execute(select(DRAW.c.winners).where(DRAW.c.event_id == event_id, DRAW.c.kind == kind)):
        found |= set(json.loads(w))
    return found


@dataclass(frozen=True, slots=True)
class Made:
    draw_id: str
    state: str  # done | void
    winners: list[str]
    entrants: int
    reason: str | None
    screen: list[dict[str, Any]]
    freeze_at: datetime | None
    entrant_hash: str = ""


def _record(conn: Connection, event_id: str, draw_id: str, kind: str, k: int, entrants: list[str], chosen: list[str], *,
            reason: str | None = None, freeze_at: datetime | None = None, offset: int | None = None, screen: Any = None,
            beacon: str = "", redraw_of: str | None = None) -> None:
    conn.execute(insert(DRAW).values(
        event_id=event_id, draw_id=draw_id, kind=kind, state="void" if reason else "done", reason=reason, k=k, freeze_at=freeze_at,
        freeze_offset_ms=offset, entrants=json.dumps(sorted(entrants), ensure_ascii=False), entrant_hash=drawproof.entrant_hash(entrants),
        winners=json.dumps(chosen, ensure_ascii=False), screen=None if screen is None else json.dumps(screen, ensure_ascii=False, default=str),
        beacon=beacon or None, redraw_of=redraw_of, made_at=utc_now()))


def existing(engine: Engine, event_id: str, draw_id: str) -> Made | None:
    with engine.connect() as conn:
        row = conn.execute(select(DRAW).where(DRAW.c.event_id == event_id, DRAW.c.draw_id == draw_id)).first()
    if row is None:
        return None
    screen = json.loads(row.screen) if row.screen else []
    return Made(row.draw_id, row.state, json.loads(row.winners), len(json.loads(row.entrants)), row.reason,
                screen if isinstance(screen, list) else [], row.freeze_at, row.entrant_hash)


def freeze_moment(engine: Engine, event_id: str, draw_id: str, hour: datetime) -> tuple[datetime, int]:
    """When the screen of the draw at `hour` freezes: inside the hour's first minute, by the seed."""
    with engine.connect() as conn:
        seed, _beacon = _seed(conn, event_id)
    offset = drawproof.freeze_offset_ms(seed, draw_id)
    return hour + timedelta(milliseconds=offset), offset


def screenshot_draw(engine: Engine, event_id: str, draw_id: str, hour: datetime, loaded: LoadedPlaybook, *,
                    live_ended_at: datetime | None = None) -> Made:
    """Freeze the screen at the committed moment of `hour` and draw its winners (once: a second call
    returns the first result)."""
    found = existing(engine, event_id, draw_id)
    if found is not None:
        return found
    rules = loaded.playbook.mechanism.screenshot_draw
    assert rules is not None
    freeze_at, offset = freeze_moment(engine, event_id, draw_id, hour)
    with engine.begin() as conn:
        seed, beacon = _seed(conn, event_id)
        rows = conn.execute(select(COMMENT.c.user_id, COMMENT.c.name, COMMENT.c.text, COMMENT.c.at, COMMENT.c.message_id, COMMENT.c.platform)
                            .where(COMMENT.c.event_id == event_id, COMMENT.c.at <= freeze_at)
                            .order_by(COMMENT.c.at.desc(), COMMENT.c.id.desc()).limit(rules.screen_size)).all()
        screen = [{"user_id": r.user_id, "name": r.name, "text": r.text, "at": r.at.astimezone(timezone.utc).isoformat(),
                   "message_id": r.message_id, "platform": r.platform} for r in reversed(rows)]
        counted = [c for c in screen if rules.keyword is None or rules.keyword in c["text"]]
        staff = excluded_ids(loaded)  # by raw id or as "<platform>:<id>"
        earlier = set() if rules.allow_repeat_winners else _earlier_winners(conn, event_id, "screenshot")
        entrants = sorted({c["user_id"] for c in counted if c["user_id"] not in staff and f"{c['platform']}:{c['user_id']}" not in staff}
                          - earlier)
        reason = None
        if live_ended_at is not None and live_ended_at < freeze_at:
            reason, entrants = f"the live ended at {live_ended_at.isoformat()}, before this draw", []
        elif not screen:
            reason = "no comments on the screen at the freeze moment"
        elif not entrants:
            reason = (f"no comment on the screen contains the keyword '{rules.keyword}'" if not counted
                      else "every author on the screen is staff, a shill account or an earlier winner")
        chosen = [] if reason else drawproof.winners(seed, draw_id, entrants, rules.winners_per_draw, beacon)
        _record(conn, event_id, draw_id, "screenshot", rules.winners_per_draw, entrants, chosen, reason=reason, freeze_at=freeze_at,
                offset=offset, screen=screen, beacon=beacon)
    return Made(draw_id, "void" if reason else "done", chosen, len(entrants), reason, screen, freeze_at, drawproof.entrant_hash(entrants))


def deposit_entrants(conn: Connection, event_id: str, products: list[str] | None, cutoff: datetime, barred: set[str]) -> list[str]:
    """People with a deposit paid by `cutoff` on one of `products` (None: any featured product) whose
    order was not refunded (by the cut-off or since: a refund disqualifies). One query: the store
    does the selecting, Python only sorts the people."""
    refunded = select(PAYMENT.c.order_id).where(PAYMENT.c.event_id == event_id, PAYMENT.c.kind == "refund")
    stmt = (select(PAYMENT.c.person).distinct()
            .where(PAYMENT.c.event_id == event_id, PAYMENT.c.kind == "deposit", PAYMENT.c.at <= cutoff,
                   PAYMENT.c.order_id.not_in(refunded)))
    if products is not None:
        stmt = stmt.where(PAYMENT.c.product.in_(products))
    return sorted({person for (person,) in conn.execute(stmt)} - barred)


def deposit_draws(engine: Engine, event_id: str, loaded: LoadedPlaybook, cutoff: datetime) -> list[Made]:
    rules = loaded.playbook.mechanism.deposit_draw
    assert rules is not None
    pools: list[tuple[str, list[str] | None]] = (
        [(f"deposit:{p.id}", [p.id]) for p in rules.products] if rules.pools == "per_product" else [("deposit:all", None)])
    out = []
    for draw_id, products in pools:
        found = existing(engine, event_id, draw_id)
        if found is not None:
            out.append(found)
            continue
        with engine.begin() as conn:
            seed, beacon = _seed(conn, event_id)
            entrants = deposit_entrants(conn, event_id, products, cutoff, excluded_ids(loaded))
            reason = None if entrants else "no paid, unrefunded deposit by the cut-off"
            chosen = [] if reason else drawproof.winners(seed, draw_id, entrants, rules.winners, beacon)
            _record(conn, event_id, draw_id, "deposit", rules.winners, entrants, chosen, reason=reason, freeze_at=cutoff, beacon=beacon)
        out.append(Made(draw_id, "void" if reason else "done", chosen, len(entrants), reason, [], cutoff, drawproof.entrant_hash(entrants)))
    return out


def redraw(engine: Engine, event_id: str, draw_id: str, disqualified: str, why: str) -> Made:
    """A disqualified winner's place drawn again, as a new draw linked to `draw_id`: same seed, the
    entrants of the first draw minus everyone it already chose."""
    first = existing(engine, event_id, draw_id)
    if first is None:
        raise DrawError(f"event {event_id} has no draw '{draw_id}'")
    if disqualified not in first.winners:
        raise DrawError(f"'{disqualified}' is not a winner of {draw_id} (winners: {', '.join(first.winners) or 'none'})")
    with engine.begin() as conn:
        row = conn.execute(select(DRAW).where(DRAW.c.event_id == event_id, DRAW.c.draw_id == draw_id)).one()
        chain = [r for (r,) in conn.execute(select(DRAW.c.draw_id).where(DRAW.c.event_id == event_id, DRAW.c.redraw_of == draw_id))]
        new_id = f"{draw_id}#redraw{len(chain) + 1}"
        taken = set(first.winners)
        for (w,) in conn.execute(select(DRAW.c.winners).where(DRAW.c.event_id == event_id, DRAW.c.redraw_of == draw_id)):
            taken |= set(json.loads(w))
        entrants = sorted(set(json.loads(row.entrants)) - taken)
        seed, beacon = _seed(conn, event_id)
        reason = None if entrants else "nobody left to draw"
        chosen = [] if reason else drawproof.winners(seed, new_id, entrants, 1, beacon)
        _record(conn, event_id, new_id, row.kind, 1, entrants, chosen, reason=reason, freeze_at=row.freeze_at, beacon=beacon,
                redraw_of=draw_id, screen={"disqualified": disqualified, "why": why})
    return Made(new_id, "void" if reason else "done", chosen, len(entrants), reason, [], row.freeze_at, drawproof.entrant_hash(entrants))


def summaries(engine: Engine, event_id: str) -> list[dict[str, Any]]:
    """Each draw made so far: id, state, winners, entrants, reason (for status and the board)."""
    with engine.connect() as conn:
        rows = conn.execute(select(DRAW.c.draw_id, DRAW.c.state, DRAW.c.winners, DRAW.c.entrants, DRAW.c.reason, DRAW.c.redraw_of)
                            .where(DRAW.c.event_id == event_id).order_by(DRAW.c.made_at, DRAW.c.draw_id)).all()
    return [{"id": r.draw_id, "state": r.state, "winners": json.loads(r.winners), "entrants": len(json.loads(r.entrants)),
             "reason": r.reason, "redraw_of": r.redraw_of} for r in rows]


# --- the audit bundle -------------------------------------------------------------------------------


def bundle(engine: Engine, event_id: str) -> dict[str, Any]:
    """Everything needed to check every draw of the event; the seed only once the event has closed."""
    with engine.connect() as conn:
        ev = conn.execute(select(EVENT.c.id, EVENT.c.title, EVENT.c.state).where(EVENT.c.id == event_id)).first()
        if ev is None:
            from orchestrator.errors import UnknownEvent

            raise UnknownEvent(f"no event '{event_id}'")
        s = conn.execute(select(SEED).where(SEED.c.event_id == event_id)).first()
        if s is None:
            raise DrawError(f"event {event_id} has no draw commitment")
        draws = conn.execute(select(DRAW).where(DRAW.c.event_id == event_id).order_by(DRAW.c.made_at, DRAW.c.draw_id)).all()
    closed = ev.state in ("closed", "cancelled")
    return {
        "version": BUNDLE_VERSION, "event": ev.id, "title": ev.title, "state": ev.state,
        "rules": json.loads(s.rules), "rules_hash": s.rules_hash, "commitment": s.commitment, "beacon": s.beacon,
        "seed": s.seed if closed else None,
        "draws": [{"id": d.draw_id, "kind": d.kind, "state": d.state, "reason": d.reason, "k": d.k,
                   "freeze_at": d.freeze_at.astimezone(timezone.utc).isoformat() if d.freeze_at else None,
                   "freeze_offset_ms": d.freeze_offset_ms, "entrants": json.loads(d.entrants), "entrant_hash": d.entrant_hash,
                   "winners": json.loads(d.winners), "beacon": d.beacon, "redraw_of": d.redraw_of,
                   "screen": json.loads(d.screen) if d.screen else None} for d in draws],
    }


def write_bundle(engine: Engine, event_id: str, folder: Path) -> Path:
    path = folder / f"{event_id}-audit.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bundle(engine, event_id), ensure_ascii=False, indent=2), encoding="utf-8")
    return path
