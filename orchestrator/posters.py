"""An event's posters: made at the poster step, stored beside their scan codes, delivered to guides.

Each guide x hook variant has a scan code (made at scheduling); its poster's QR carries
`<public URL>/s/<code>`. The PNGs live in the store, so any web process serves them:
`/p/<code>.png` one poster, `/posters/<event>/<key>` all of them (the key is made here and only
printed to staff). Each guide gets one message with the links to their own posters, through the
first channel the playbook names, recorded in the send ledger like every other message
(recipient `guide:<id>`), so a repeated step never sends it twice.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select, update

from orchestrator import ledger, poster
from orchestrator.channels.base import Outgoing, Transport, backoff
from orchestrator.copytext import date_text
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import Guide
from orchestrator.store import Event, ScanCode, utc_now

SCANCODE = ScanCode.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
STEP_ID = "poster"
ATTEMPTS = 3
MAX_PAUSE = 10.0  # seconds between tries: the step is one job, with arq's timeout


@dataclass(frozen=True, slots=True)
class Stored:
    code: str
    guide_id: str
    variant: str


def codes_of(engine: Engine, event_id: str) -> dict[tuple[str, str], str]:
    """(guide id, variant id) -> scan code."""
    with engine.connect() as conn:
        rows = conn.execute(select(SCANCODE.c.guide_id, SCANCODE.c.variant, SCANCODE.c.code).where(SCANCODE.c.event_id == event_id))
        return {(g, v): c for g, v, c in rows}


@dataclass(frozen=True, slots=True)
class ToDraw:
    guide: Guide
    variant: str
    code: str
    spec: poster.PosterSpec
    fingerprint: str


def to_draw(engine: Engine, event_id: str, loaded: LoadedPlaybook, start: datetime, codes: dict[tuple[str, str], str], public_url: str,
            font: Path) -> tuple[list[ToDraw], int]:
    """The event's posters not stored as they should be now (none stored yet, or drawn from
    another start time, link, layout or font), in guide and variant order; and how many posters
    the event has in all."""
    links = {key: poster.scan_link(public_url, code) for key, code in codes.items()}
    with engine.connect() as conn:
        stored: dict[str, str | None] = {code: fp for code, fp in conn.execute(select(SCANCODE.c.code, SCANCODE.c.poster_hash)
                                                                                  .where(SCANCODE.c.event_id == event_id))}
    todo: list[ToDraw] = []
    total = 0
    for g, v, spec in poster.specs(loaded, start, links):
        total += 1
        code = codes[(g.id, v)]
        fp = poster.fingerprint(spec, font)
        if stored.get(code) != fp:
            todo.append(ToDraw(g, v, code, spec, fp))
    return todo, total


def draw(todo: Sequence[ToDraw], font: Path) -> list[tuple[ToDraw, bytes]]:
    """Render these posters (CPU work: call it off the event loop)."""
    return [(t, poster.render(t.spec, font)) for t in todo]


def store(engine: Engine, drawn: Sequence[tuple[ToDraw, bytes]]) -> None:
    """Keep the PNGs beside their codes, with what they were drawn from."""
    now = utc_now()
    with engine.begin() as conn:
        for t, png in drawn:
            conn.execute(update(SCANCODE).where(SCANCODE.c.code == t.code).values(poster=png, poster_at=now, poster_hash=t.fingerprint))


def page_key(engine: Engine, event_id: str) -> str:
    """The key of the event's poster page (made the first time it is asked for)."""
    with engine.begin() as conn:
        key = conn.execute(select(EVENT.c.poster_key).where(EVENT.c.id == event_id)).scalar_one_or_none()
        if key is None:
            key = secrets.token_urlsafe(12)
            conn.execute(update(EVENT).where(EVENT.c.id == event_id).values(poster_key=key))
    return str(key)


def poster_png(engine: Engine, code: str) -> bytes | None:
    with engine.connect() as conn:
        png: bytes | None = conn.execute(select(SCANCODE.c.poster).where(SCANCODE.c.code == code)).scalar_one_or_none()
    return png


def page_items(engine: Engine, event_id: str, key: str, public_url: str) -> tuple[str, list[dict[str, str]]] | None:
    """The title and posters of the event's poster page, or None when the key is wrong."""
    from orchestrator.store import Guide as GuideRow

    guide = GuideRow.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        ev = conn.execute(select(EVENT.c.title, EVENT.c.poster_key).where(EVENT.c.id == event_id)).first()
        if ev is None or ev.poster_key is None or not secrets.compare_digest(ev.poster_key, key):
            return None
        rows = conn.execute(select(SCANCODE.c.code, SCANCODE.c.guide_id, SCANCODE.c.variant, guide.c.name)
                            .join(guide, (guide.c.event_id == SCANCODE.c.event_id) & (guide.c.guide_id == SCANCODE.c.guide_id))
                            .where(SCANCODE.c.event_id == event_id, SCANCODE.c.poster.is_not(None))
                            .order_by(SCANCODE.c.guide_id, SCANCODE.c.variant)).all()
    base = public_url.rstrip("/")
    return ev.title, [{"guide": f"{name}（{gid}）", "variant": variant, "filename": f"{gid}-{variant}.png", "src": f"{base}/p/{code}.png",
                       "link": poster.scan_link(public_url, code)} for code, gid, variant, name in rows]


def page_url(public_url: str, event_id: str, key: str) -> str:
    return f"{public_url.rstrip('/')}/posters/{event_id}/{key}"


def guide_text(guide: Guide, title: str, start: datetime, links: list[tuple[str, str]], post_at: datetime) -> str:
    lines = [f"{guide.name}，您好！「{title}」的朋友圈海报已生成（{date_text(start)}{start:%H:%M} 开播）："]
    lines += [f"版本 {variant}：{url}" for variant, url in links]
    lines.append(f"请在 {post_at:%m月%d日 %H:%M} 前发到朋友圈，二维码已带您的渠道码，扫码进群都会记在您名下。")
    return "\n".join(lines)


async def deliver(engine: Engine, event_id: str, worker: str, guides: Sequence[Guide], texts: dict[str, str],
                  channel: str, transport_name: str, transport: Transport) -> tuple[int, int]:
    """Send each guide their message once (through the ledger); (sent, failed). A temporary failure
    is tried again after a pause (2 s, then 4 s, or what the peer asks, at most `MAX_PAUSE`), at
    most `ATTEMPTS` tries in all."""
    await asyncio.to_thread(ledger.plan_sends, engine, event_id, STEP_ID, [(f"guide:{g.id}", channel, transport_name) for g in guides])
    by_member = {f"guide:{g.id}": g for g in guides}
    sent = failed = 0
    pause = 0.0
    for _attempt in range(ATTEMPTS):
        if pause:
            await asyncio.sleep(pause)
        pause = 0.0
        claimed = await asyncio.to_thread(ledger.claim, engine, event_id, STEP_ID, worker, len(guides) or 1)
        if not claimed:
            break
        outgoing = []
        for c in claimed:
            g = by_member[c.member_id]
            address = {k: v for k, v in (("phone", g.phone), ("email", g.email), ("wecom_userid", g.wecom_userid)) if v}
            outgoing.append(Outgoing(c.key, event_id, STEP_ID, c.member_id, c.channel, g.name, texts[g.id], address))
        outcomes = await transport.send_batch(outgoing)
        results = []
        for c, o in zip(claimed, outcomes, strict=True):
            if o.state == "sent":
                results.append(ledger.Result(c.id, "sent", provider_id=o.provider_id))
                sent += 1
            elif o.state == "unknown":  # the peer may have it: not sent again
                results.append(ledger.Result(c.id, "unknown", error=o.error))
            elif o.state == "retry" and c.attempts < ATTEMPTS:
                results.append(ledger.Result(c.id, "planned", error=o.error, not_before=None))
                pause = max(pause, min(MAX_PAUSE, backoff(c.attempts, o.retry_after)))
            else:
                results.append(ledger.Result(c.id, "failed", error=o.error))
                failed += 1
        await asyncio.to_thread(ledger.finish, engine, worker, results)
    return sent, failed
