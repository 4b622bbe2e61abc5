"""WeCom 1:1 mass messages (群发): a message to a customer is a *task* their guide confirms in the app.

`send_batch` groups messages by (guide, text) and creates one `add_msg_template` task per group
from the guide's WeCom userid to their customers: each row becomes `created` with the task's
msgid. `orchestrator.taskwatch` then follows the tasks: confirmed and delivered rows become
`sent`, refused ones `failed` (not a friend, quota reached); unconfirmed tasks are reminded and
escalated, stale ones cancelled.

The monthly per-customer quota (each customer receives at most `quota` mass messages a month,
WeCom's default being the month's number of days) is counted here, ahead of the platform, in
Redis shared by every worker; a message past it fails with the reason and never reaches WeCom.
Not idempotent: WeCom has no idempotency key, and a task made twice would reach people twice.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
from redis.asyncio import Redis

from orchestrator.channels.base import Outcome, Outgoing
from orchestrator.wecom import BUSY, RATE_LIMITED, WeComClient, WeComError

CST = timezone(timedelta(hours=8))  # WeCom's months are China's


def quota_key(external_userid: str, month: str) -> str:
    return f"orch:wecom:quota:{external_userid}:{month}"


class WeComTaskTransport:
    name = "wecom_tasks"
    idempotent = False

    def __init__(self, redis: Redis, corp_id: str, secret: str, *, base_url: str, quota: int | None = None) -> None:
        self.redis, self.corp_id, self.secret, self.base_url = redis, corp_id, secret, base_url
        self.quota = quota  # None: the month's number of days
        self._session: aiohttp.ClientSession | None = None

    def client(self) -> WeComClient:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return WeComClient(self._session, self.redis, self.corp_id, self.secret, base_url=self.base_url)

    async def send(self, message: Outgoing) -> Outcome:
        return (await self.send_batch([message]))[0]

    def calls(self, messages: Sequence[Outgoing]) -> int:
        """Platform calls a batch makes: one task per guide and text (what a channel's rate limit counts here)."""
        return max(1, len({(m.extra.get("wecom_sender"), m.text) for m in messages}))

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        now = datetime.now(CST)
        month, limit = f"{now:%Y%m}", self.quota or calendar.monthrange(now.year, now.month)[1]
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, m in enumerate(messages):
            sender, customer = m.extra.get("wecom_sender"), m.address.get("wecom_external_userid")
            if not customer:
                outcomes[i] = Outcome("failed", error="no WeCom external userid")
            elif not sender:
                outcomes[i] = Outcome("failed", error="the member's guide has no WeCom userid (guides.csv: wecom_userid)")
            else:
                groups[(str(sender), m.text)].append(i)
        taken = await self._take_quota([messages[i].address["wecom_external_userid"] for ix in groups.values() for i in ix], month, limit)
        client = self.client()
        for (sender, text), indexes in groups.items():
            within = [i for i in indexes if taken[messages[i].address["wecom_external_userid"]]]
            for i in indexes:
                if i not in within:
                    outcomes[i] = Outcome("failed", error=f"quota reached: {limit} mass messages this month to this customer")
            if not within:
                continue
            customers = [messages[i].address["wecom_external_userid"] for i in within]
            try:
                msgid, refused = await client.add_msg_template(sender=sender, external_userids=customers, text=text)
            except WeComError as e:
                await self._give_back_quota(customers, month)
                temporary = e.errcode in (BUSY, RATE_LIMITED, -2)
                for i in within:
                    outcomes[i] = Outcome("retry" if temporary else "failed", error=str(e)[:300], retry_after=60.0 if temporary else None)
                continue
            refused_set = set(refused)
            if refused_set:
                await self._give_back_quota([c for c in customers if c in refused_set], month)
            for i in within:
                customer = messages[i].address["wecom_external_userid"]
                outcomes[i] = (Outcome("failed", error=f"WeCom refused: {customer} is not a customer of {sender}") if customer in refused_set
                               else Outcome("created", provider_id=msgid))
        return [o if o is not None else Outcome("retry", error="not sent") for o in outcomes]

    async def _take_quota(self, customers: list[str], month: str, limit: int) -> dict[str, bool]:
        """One mass message of this month per customer, if their quota allows; customer -> granted."""
        if not customers:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in customers:
                pipe.incr(quota_key(c, month))
                pipe.expire(quota_key(c, month), 40 * 86400)
            counts = (await pipe.execute())[::2]
        granted = {c: int(n) <= limit for c, n in zip(customers, counts, strict=True)}
        await self._give_back_quota([c for c, ok in granted.items() if not ok], month)
        return granted

    async def give_back_quota(self, customers: list[str]) -> None:
        """Customers a task never reached (cancelled): their month's mass message was not used."""
        await self._give_back_quota(customers, f"{datetime.now(CST):%Y%m}")

    async def _give_back_quota(self, customers: list[str], month: str) -> None:
        if customers:
            async with self.redis.pipeline(transaction=False) as pipe:
                for c in customers:
                    pipe.decr(quota_key(c, month))
                await pipe.execute()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def from_settings(settings: Any, redis: Redis) -> WeComTaskTransport:
    return WeComTaskTransport(redis, str(settings.wecom_corp_id), str(settings.wecom_secret), base_url=settings.wecom_api,
                              quota=settings.wecom_quota)
