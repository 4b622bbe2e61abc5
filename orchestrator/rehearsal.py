"""A synthetic audience for rehearsals: people who scan posters, join groups, enter the live room,
comment, pay deposits, order and now and then refund, and a few members who opt out before the
live (so the reminders skip them), all through the real HTTP endpoints of a
running web app, at moments spread over the event's own (accelerated) clock.

What happens is decided up front by a seeded random generator (`plan`), so `--seed` gives the
same audience every time; when it happens follows the event clock. Poster variants convert
differently (the first variant's hook joins better), so the board's A/B comparison has something
to show; about one comment in three carries the screenshot draw's keyword.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from orchestrator.channels.webhook import sign
from orchestrator.clock import Clock
from orchestrator.load import LoadedPlaybook
from orchestrator.plan import Stage, plan

log = logging.getLogger("orchestrator.rehearsal")
SCAN_RATE = 0.30  # of the audience
JOIN_RATE = {0: 0.62, 1: 0.45}  # by variant position; later variants as the second
ENTER_RATE, COMMENT_RATE, DEPOSIT_RATE, ORDER_RATE, REFUND_RATE = 0.55, 0.45, 0.08, 0.12, 0.1
OPTOUT_RATE = 0.02  # of the audience's members, before the live: some from everything, some from one channel
COMMENTS = ("主播好！", "这款有现货吗", "已下单", "求链接", "好看", "什么时候发货", "老客来了", "尺寸多大")


@dataclass(order=True)
class Action:
    at: datetime
    kind: str = field(compare=False)  # scan | join | enter | comment | deposit | order | refund | optout
    person: str = field(compare=False)
    data: dict[str, Any] = field(compare=False, default_factory=dict)


def plan_actions(loaded: LoadedPlaybook, start: datetime, codes: dict[tuple[str, str], str], seed: int) -> list[Action]:
    """Everything the synthetic audience will do, in event time; the same for the same seed."""
    rng = random.Random(seed)
    pb = loaded.playbook
    p = plan(loaded, start.astimezone(pb.tz))
    poster_at = next((s.at for s in p.steps if s.stage is Stage.POSTER), p.live_start - timedelta(days=1))
    live_start, live_end = p.live_start, p.live_end
    draw = pb.mechanism.screenshot_draw
    keyword = draw.keyword if draw is not None and draw.keyword else "焕新"
    deposit = pb.mechanism.deposit_draw
    cutoff_step = next((s for s in p.steps if s.stage is Stage.DRAW_DEPOSIT), None)
    cutoff = datetime.fromisoformat(cutoff_step.detail["cutoff"]) if cutoff_step and cutoff_step.detail else live_end
    products = [x.id for x in deposit.products] if deposit else []
    variants = pb.path.poster.variants
    weights = [v.weight for v in variants]
    guides = sorted({g for g, _v in codes})
    people = max(20, int(p.audience_total * SCAN_RATE))
    out: list[Action] = []

    def between(a: datetime, b: datetime) -> datetime:
        return a + (b - a) * rng.random()

    for n in range(people):
        person = f"sim{n:05d}"
        guide = rng.choice(guides)
        vi = rng.choices(range(len(variants)), weights)[0]
        scanned = between(poster_at, live_start)
        out.append(Action(scanned, "scan", person, {"code": codes[(guide, variants[vi].id)]}))
        if rng.random() < JOIN_RATE[min(vi, 1)]:
            out.append(Action(scanned + (live_start - scanned) * 0.01, "join", person, {"guide": guide}))
            if rng.random() < ENTER_RATE:
                entered = between(live_start, live_end - (live_end - live_start) * 0.2)
                out.append(Action(entered, "enter", person))
                if rng.random() < COMMENT_RATE:
                    for _ in range(rng.randint(1, 4)):
                        text = rng.choice(COMMENTS) + (keyword if rng.random() < 0.35 else "")
                        out.append(Action(between(entered, live_end), "comment", person, {"text": text}))
                if products and rng.random() < DEPOSIT_RATE:
                    out.append(Action(between(entered, max(entered, cutoff)), "deposit", person, {"product": rng.choice(products)}))
                if rng.random() < ORDER_RATE:
                    ordered = between(entered, live_end)
                    amount = rng.choice((19900, 39900, 129900, 259900))
                    out.append(Action(ordered, "order", person, {"amount_fen": amount}))
                    if rng.random() < REFUND_RATE:
                        out.append(Action(between(ordered, live_end), "refund", person, {"amount_fen": amount}))
    members = sorted(loaded.members)
    for member in rng.sample(members, round(len(members) * OPTOUT_RATE)):  # they said no (a reply TD, an unsubscribe link)
        out.append(Action(between(poster_at, live_start), "optout", member, {"channel": rng.choice(("*", "*", "sms", "email"))}))
    return sorted(out)


class Audience:
    """Plays a planned audience against a web app (its base URL), signing what it posts."""

    def __init__(self, base_url: str, event_id: str, clock: Clock, secret: str, api_token: str) -> None:
        self.base = base_url.rstrip("/")
        self.event_id, self.clock, self.secret, self.token = event_id, clock, secret, api_token
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    async def play(self, actions: list[Action], stop: asyncio.Event | None = None) -> Counter[str]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=10)) as http:
            batch: list[Action] = []
            for action in actions:
                if stop is not None and stop.is_set():
                    break
                wait = self.clock.real_epoch(action.at) - time.time()
                if wait > 0.05 and batch:
                    await self._send(http, batch)
                    batch = []
                if wait > 0:
                    await asyncio.sleep(wait)  # the event clock's moment for it
                batch.append(action)
                if len(batch) >= 200:
                    await self._send(http, batch)
                    batch = []
            if batch:
                await self._send(http, batch)
        return self.done

    async def _send(self, http: aiohttp.ClientSession, batch: list[Action]) -> None:
        by_kind: dict[str, list[Action]] = {}
        for a in batch:
            by_kind.setdefault(a.kind, []).append(a)
        jobs = [self._scan(http, a) for a in by_kind.get("scan", [])]
        if "join" in by_kind:
            jobs.append(self._post(http, "joins", {"joins": [{"person": a.person, "guide": a.data["guide"]} for a in by_kind["join"]]},
                                   bearer=True, kind="join", n=len(by_kind["join"])))
        visits = [{"visit_id": f"{a.person}-enter", "kind": "enter", "person": a.person, "time": a.at.isoformat()} for a in by_kind.get("enter", [])]
        if visits:
            jobs.append(self._post(http, "visits", {"visits": visits}, kind="enter", n=len(visits)))
        comments = [{"platform": "other", "room": "rehearsal", "message_id": secrets.token_hex(8), "user_id": a.person, "name": f"观众{a.person[-4:]}",
                     "text": a.data["text"], "time": a.at.isoformat()} for a in by_kind.get("comment", [])]
        if comments:
            jobs.append(self._post(http, "comments", {"comments": comments}, kind="comment", n=len(comments)))
        pays = []
        for kind in ("deposit", "order", "refund"):
            for a in by_kind.get(kind, []):
                order = f"{a.person}-{'d' if kind == 'deposit' else 'o'}"
                pays.append({"payment_id": f"{order}-{kind}", "kind": kind, "order_id": order, "person": a.person,
                             "amount_fen": a.data.get("amount_fen", 10000), "time": a.at.isoformat(),
                             **({"product": a.data["product"]} if kind == "deposit" else {})})
        if pays:
            jobs.append(self._post(http, "payments", {"payments": pays}, kind="payment", n=len(pays)))
        if "optout" in by_kind:  # global, not the event's: the API's own path
            jobs.append(self._post(http, "/api/optouts", {"optouts": [{"member": a.person, "channel": a.data["channel"]} for a in by_kind["optout"]]},
                                   bearer=True, kind="optout", n=len(by_kind["optout"])))
        await asyncio.gather(*jobs)

    async def _scan(self, http: aiohttp.ClientSession, a: Action) -> None:
        visitor = secrets.token_hex(16)
        try:
            async with http.get(f"{self.base}/s/{a.data['code']}", headers={"Cookie": f"ov={visitor}"}) as r:
                (self.done if r.status == 200 else self.failed)["scan"] += 1
        except aiohttp.ClientError:
            self.failed["scan"] += 1

    async def _post(self, http: aiohttp.ClientSession, resource: str, body: dict[str, Any], *, kind: str, n: int, bearer: bool = False) -> None:
        raw = json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if bearer:
            headers["Authorization"] = f"Bearer {self.token}"
        else:
            ts = str(int(time.time()))
            headers |= {"X-Orchestrator-Timestamp": ts, "X-Orchestrator-Signature": sign(self.secret, ts, raw)}
        try:
            path = resource if resource.startswith("/") else f"/api/events/{self.event_id}/{resource}"
            async with http.post(self.base + path, data=raw, headers=headers) as r:
                if r.status == 200:
                    self.done[kind] += n
                else:
                    self.failed[kind] += n
                    log.warning("rehearsal %s: HTTP %d %s", resource, r.status, (await r.text())[:200])
        except aiohttp.ClientError as e:
            self.failed[kind] += n
            log.warning("rehearsal %s: %s", resource, e)
