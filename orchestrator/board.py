"""The host board's snapshot of an event, and the publisher that pushes it through Redis.

A snapshot holds everything the board shows: the funnel (with rates and KPI pacing), per guide, per
poster variant (with the difference in conversion and its 95% confidence interval), per minute,
the draws (winners masked), the countdown to the next draw, the SOP cue of this minute and the
next, and the latest comments. Every worker runs the publisher: several times a second it takes the
events whose figures changed (coalesced: one snapshot however many things happened), builds their
snapshots, keeps the latest in Redis and publishes it on the event's channel, so any number of web
processes serve any number of viewers. Running events are also refreshed every few seconds (the
countdown and the cue move with the clock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from datetime import datetime, timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import Engine, func, select

from orchestrator import draws
from orchestrator.copytext import mask
from orchestrator.funnel import Funnel
from orchestrator.scheduling import EVENT, STEP, event_clock, get_event, loaded_event
from orchestrator.store import Comment, Guide, Member, Send

log = logging.getLogger("orchestrator.board")
COMMENT = Comment.__table__  # type: ignore[attr-defined]
SEND = Send.__table__  # type: ignore[attr-defined]
MEMBER = Member.__table__  # type: ignore[attr-defined]
GUIDE = Guide.__table__  # type: ignore[attr-defined]
EVERY = 0.05  # seconds between the starts of two publisher rounds: what changed reaches viewers within about this
SIDE_TTL = 1.0  # seconds the store's part of a snapshot (steps, draws, comments ticker) is reused
REFRESH = 5.0  # seconds between snapshots of running events that did not change
FUNNEL = (("reached", "kpi_reached"), ("scanned", "scanned"), ("joined", "joined"), ("reminded", "reminded"),
          ("entered", "entered_live"), ("commented", "commented"), ("deposited", "deposits"), ("ordered", "orders"))
FROM_REACHED = {"reminded"}  # steps whose people are not a part of the previous step's
LABELS = {"reached": "触达", "scanned": "扫码", "joined": "进群", "reminded": "提醒送达", "entered": "进直播间", "commented": "评论",
          "deposited": "付定金", "ordered": "下单"}


def channel(event_id: str) -> str:
    return f"orch:board:{event_id}"


def diff_interval(a_hits: int, a_n: int, b_hits: int, b_n: int) -> tuple[float, float, float] | None:
    """Difference of two conversion rates (b - a) and its 95% confidence interval (normal approximation)."""
    if a_n == 0 or b_n == 0:
        return None
    pa, pb = a_hits / a_n, b_hits / b_n
    se = math.sqrt(pa * (1 - pa) / a_n + pb * (1 - pb) / b_n)
    d = pb - pa
    return d, d - 1.96 * se, d + 1.96 * se


def projection(count: int, start: datetime, end: datetime, now: datetime) -> int | None:
    """Where a count ends up by `end` at the pace it has kept since `start` (None outside the window)."""
    if now <= start or now >= end or count == 0:
        return None
    return round(count * (end - start).total_seconds() / (now - start).total_seconds())


def _store_side(engine: Engine, event_id: str) -> dict[str, Any]:
    ev = get_event(engine, event_id)
    loaded = loaded_event(engine, ev, members=False)
    pb = loaded.playbook
    clock = event_clock(ev)
    now = clock.now()
    tz = pb.tz
    with engine.connect() as conn:
        steps = conn.execute(select(STEP.c.step_id, STEP.c.stage, STEP.c.at, STEP.c.state, STEP.c.label)
                             .where(STEP.c.event_id == event_id).order_by(STEP.c.at)).all()
        recent = conn.execute(select(COMMENT.c.name, COMMENT.c.user_id, COMMENT.c.text, COMMENT.c.at).where(COMMENT.c.event_id == event_id)
                              .order_by(COMMENT.c.at.desc(), COMMENT.c.id.desc()).limit(8)).all()
        state = conn.execute(select(EVENT.c.state).where(EVENT.c.id == event_id)).scalar_one()
        unconfirmed = _unconfirmed(conn, event_id)
    draw_steps = [s for s in steps if s.stage in ("draw_screenshot", "draw_deposit")]
    upcoming = next((s for s in draw_steps if s.state in ("scheduled", "deferred") and s.at > now), None)
    cues = [s for s in steps if s.stage == "sop_cue"]
    current_cue = next((s for s in reversed(cues) if s.at <= now), None)
    next_cue = next((s for s in cues if s.at > now), None)
    made = draws.summaries(engine, event_id)
    names = {}
    for d in made:  # winners' display names from the screens
        found = draws.existing(engine, event_id, d["id"])
        if found is not None:
            names.update({c["user_id"]: c["name"] for c in found.screen})
    first = steps[0].at if steps else ev.live_start
    return {
        "event": event_id, "title": pb.title, "state": state, "now": now.astimezone(tz).isoformat(),
        "window": {"start": first.isoformat(), "end": ev.live_end.isoformat(), "now": now.isoformat()},
        "live": {"start": ev.live_start.astimezone(tz).isoformat(), "end": ev.live_end.astimezone(tz).isoformat()},
        "kpi": pb.goal.kpi.model_dump(mode="json"), "guides": [{"id": g.id, "name": g.name} for g in loaded.guides],
        "variants": [{"id": v.id, "hook": v.hook} for v in pb.path.poster.variants],
        "next_draw": None if upcoming is None else {"label": upcoming.label, "at": upcoming.at.astimezone(tz).isoformat(),
                                                    "in_seconds": clock.real_delay(upcoming.at - now)},
        "draws": [{"id": d["id"], "state": d["state"], "entrants": d["entrants"], "reason": d["reason"],
                   "winners": [mask(names.get(w, w)) for w in d["winners"]]} for d in made],
        "commitment": (draws.commitment_of(engine, event_id) or {}).get("commitment"),
        "cue": None if current_cue is None else current_cue.label, "next_cue": None if next_cue is None else
        {"label": next_cue.label, "at": next_cue.at.astimezone(tz).strftime("%H:%M")},
        "comments": [{"name": mask(r.name or r.user_id), "text": r.text, "at": r.at.astimezone(tz).strftime("%H:%M:%S")} for r in recent],
        "unconfirmed": unconfirmed,
        "minute_of_show": max(0, int((now - ev.live_start) / timedelta(minutes=1))) if now >= ev.live_start else None,
    }


def _unconfirmed(conn: Any, event_id: str) -> dict[str, int]:
    """WeCom mass-message tasks created and not yet confirmed by their guide, per guide: a task to a
    member counts to the member's guide, a task to a guide's groups (recipient `guide:<id>`) to that
    guide, and any other (a post into a customer group) to the guide whose WeCom userid must confirm it."""
    rows = conn.execute(select(SEND.c.member_id, MEMBER.c.guide, SEND.c.sender, func.count())
                        .select_from(SEND.outerjoin(MEMBER, (MEMBER.c.event_id == SEND.c.event_id) & (MEMBER.c.member_id == SEND.c.member_id)))
                        .where(SEND.c.event_id == event_id, SEND.c.awaiting.is_not(None), SEND.c.state == "created",
                               SEND.c.channel.in_(("wecom_customer", "wecom_group")))
                        .group_by(SEND.c.member_id, MEMBER.c.guide, SEND.c.sender)).all()
    by_userid = {u: g for g, u in conn.execute(select(GUIDE.c.guide_id, GUIDE.c.wecom_userid)
                                                 .where(GUIDE.c.event_id == event_id, GUIDE.c.wecom_userid.is_not(None)))}
    out: dict[str, int] = {}
    for recipient, guide, sender, n in rows:
        owner = recipient[6:] if recipient.startswith("guide:") else guide or by_userid.get(sender)
        if owner:
            out[owner] = out.get(owner, 0) + int(n)
    return out


_SIDES: dict[str, tuple[float, dict[str, Any]]] = {}
_REFRESHING: dict[str, asyncio.Task[None]] = {}


async def snapshot(redis: Redis, engine: Engine, event_id: str, fresh: bool = False) -> dict[str, Any]:
    """The snapshot: Redis's counts as they are now, the store's part as of about SIDE_TTL ago.

    The store's part is read again in the background when it is older than SIDE_TTL, and the
    snapshot meanwhile uses the one it has, so a slow read never holds up the counts; when the new
    one differs, the event is marked for the publisher's next round. `fresh` waits for a new read.
    """
    loop = asyncio.get_running_loop()
    hit = _SIDES.get(event_id)
    if fresh or hit is None:
        side = await asyncio.to_thread(_store_side, engine, event_id)
        _keep_side(event_id, side, loop.time())
    else:
        side = hit[1]
        if hit[0] < loop.time() and event_id not in _REFRESHING:
            _REFRESHING[event_id] = asyncio.create_task(_refresh_side(redis, engine, event_id, side))
    figures = await Funnel(redis).figures(event_id, [g["id"] for g in side["guides"]], [v["id"] for v in side["variants"]])
    totals = figures["totals"]
    kpi = side["kpi"]
    funnel, previous = [], None
    for step, target_key in FUNNEL:
        n = totals[step]
        target = kpi.get("reached" if step == "reached" else target_key)
        window = side["window"]
        projected = None if step == "reached" else projection(n, datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"]),
                                                               datetime.fromisoformat(window["now"]))
        funnel.append({"step": step, "label": LABELS[step], "count": n, "target": target, "projected": projected,
                       # reminders go to the whole audience, not to those who joined: their base is
                       # "reached" (of_reached), and a share of the joined (often over 100%) would mislead
                       "of_previous": None if not previous or step in FROM_REACHED else round(n / previous, 4),
                       "of_reached": None if not totals["reached"] else round(n / totals["reached"], 4)})
        previous = n if n else previous
    variants = []
    for v in side["variants"]:
        row = figures["variants"][v["id"]]
        variants.append({**v, **row, "rate": round(row["joined"] / row["scanned"], 4) if row["scanned"] else None,
                         "enough": row["scanned"] >= 1000})
    comparison = None
    if len(variants) >= 2:
        a, b = variants[0], variants[1]
        found = diff_interval(a["joined"], a["scanned"], b["joined"], b["scanned"])
        if found is not None:
            comparison = {"a": a["id"], "b": b["id"], "difference": round(found[0], 4), "low": round(found[1], 4), "high": round(found[2], 4),
                          "significant": found[1] > 0 or found[2] < 0, "enough": a["enough"] and b["enough"]}
    guides = [{**g, **figures["guides"][g["id"]], "unconfirmed": side["unconfirmed"].get(g["id"], 0)} for g in side["guides"]]
    return {**side, "funnel": funnel, "gmv_fen": figures["gmv_fen"], "gmv_target_cny": kpi.get("gmv_cny"), "per_guide": guides,
            "per_variant": variants, "comparison": comparison, "per_minute": figures["minutes"]}


def _keep_side(event_id: str, side: dict[str, Any], now: float) -> None:
    if len(_SIDES) > 100:
        _SIDES.clear()
    _SIDES[event_id] = (now + SIDE_TTL, side)


def _news(side: dict[str, Any]) -> dict[str, Any]:
    """The store's part without what only says the time (which the publisher's rounds carry anyway)."""
    out = {k: v for k, v in side.items() if k not in ("now", "window")}
    if out.get("next_draw"):
        out["next_draw"] = {k: v for k, v in out["next_draw"].items() if k != "in_seconds"}
    return out


async def _refresh_side(redis: Redis, engine: Engine, event_id: str, before: dict[str, Any]) -> None:
    try:
        side = await asyncio.to_thread(_store_side, engine, event_id)
        _keep_side(event_id, side, asyncio.get_running_loop().time())
        if _news(side) != _news(before):
            await Funnel(redis).mark_dirty(event_id)
    except Exception:  # kept for the next round: the snapshot goes on with the part it has
        log.exception("the board's store part of %s was not read", event_id)
    finally:
        _REFRESHING.pop(event_id, None)


async def publish(redis: Redis, engine: Engine, event_id: str) -> dict[str, Any]:
    snap = await snapshot(redis, engine, event_id)
    text = json.dumps(snap, ensure_ascii=False, separators=(",", ":"))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(channel(event_id), text, ex=7 * 24 * 3600)
        pipe.publish(channel(event_id), text)
        await pipe.execute()
    return snap


def _running(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [e for (e,) in conn.execute(select(EVENT.c.id).where(EVENT.c.state == "running"))]


async def publisher(redis: Redis, engine: Engine) -> None:
    """Publish changed events every EVERY seconds and running ones every REFRESH seconds anyway (the
    countdown and the SOP cue move with the clock), forever."""
    f = Funnel(redis)
    last_refresh = 0.0
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        try:
            due = set(await f.take_dirty())
            if loop.time() - last_refresh >= REFRESH:
                due |= set(await asyncio.to_thread(_running, engine))
                last_refresh = loop.time()
            for event_id in sorted(due):
                await publish(redis, engine, event_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the board must outlive a hiccup of the store or of one event
            log.exception("board publisher round failed; trying again")
        await asyncio.sleep(max(0.0, began + EVERY - loop.time()))  # rounds start EVERY apart, however long one took
