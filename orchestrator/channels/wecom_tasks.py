"""WeCom mass messages (群发): a message is a *task* a person confirms in the WeCom app.

- To customers (`wecom_customer`): `send_batch` groups messages by (guide, text) and creates one
  `add_msg_template` task (chat_type single) per group from the guide's WeCom userid to their
  customers.
- Into customer groups (`wecom_group`, a message per group, address `chat_id`): one task
  (chat_type group) per (owner, text) from the groups' owner (`groupchat/get`) into their groups.

Each row becomes `created` with the task's msgid. `orchestrator.taskwatch` then follows the
tasks: confirmed and delivered rows become `sent`, refused ones `failed` (not a friend, quota
reached); unconfirmed tasks are reminded and escalated, stale ones cancelled.

The monthly quota (each customer and each customer group receives at most `quota` mass messages a
month, WeCom's default being the month's number of days) is counted here, ahead of the platform,
in Redis shared by every worker; a message past it fails with the reason and never reaches WeCom.
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
        self._owners: dict[str, str] = {}  # chat id -> owner userid

    def client(self) -> WeComClient:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return WeComClient(self._session, self.redis, self.corp_id, self.secret, base_url=self.base_url)

    async def send(self, message: Outgoing) -> Outcome:
        return (await self.send_batch([message]))[0]

    def calls(self, messages: Sequence[Outgoing]) -> int:
        """Platform calls a batch makes: one task per sender and text (what a channel's rate limit
        counts here). A group's sender is its owner, once known (asked at its first post); until
        then each group counts as one, never fewer than the tasks made."""
        def sender(m: Outgoing) -> Any:
            if m.channel != "wecom_group":
                return m.extra.get("wecom_sender")
            chat = str(m.address.get("chat_id"))
            return self._owners.get(chat, chat)
        return max(1, len({(sender(m), m.text) for m in messages}))

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(messages)
        now = datetime.now(CST)
        month, limit = f"{now:%Y%m}", self.quota or calendar.monthrange(now.year, now.month)[1]
        client = self.client()
        tasks: dict[tuple[str, str, str], list[tuple[int, str]]] = defaultdict(list)  # (chat type, sender, text) -> (index, recipient)
        for i, m in enumerate(messages):
            found = await self._sender(client, m)
            if isinstance(found, Outcome):
                outcomes[i] = found
            else:
                tasks[(found[0], found[1], m.text)].append((i, found[2]))
        taken = await self._take_quota([r for items in tasks.values() for _i, r in items], month, limit)
        for (kind, sender, text), items in tasks.items():
            within = [(i, r) for i, r in items if taken[r]]
            for i, _r in (item for item in items if not taken[item[1]]):
                outcomes[i] = Outcome("failed", error=f"quota reached: {limit} mass messages this month "
                                                      f"{'into this group' if kind == 'group' else 'to this customer'}")
            recipients = [r for _i, r in within]
            if not recipients:
                continue
            try:
                if kind == "group":
                    msgid, refused = await client.add_group_msg_template(sender=sender, chat_ids=recipients, text=text)
                else:
                    msgid, refused = await client.add_msg_template(sender=sender, external_userids=recipients, text=text)
            except WeComError as e:
                await self._give_back_quota(recipients, month)
                for i, _r in within:
                    outcomes[i] = _refused(e)
                continue
            await self._give_back_quota([r for r in recipients if r in set(refused)], month)
            for i, r in within:
                outcomes[i] = (Outcome("failed", error=f"WeCom refused: group {r} is not one of {sender}'s" if kind == "group"
                                       else f"WeCom refused: {r} is not a customer of {sender}") if r in refused
                               else Outcome("created", provider_id=msgid, sender=sender))
        return [o if o is not None else Outcome("retry", error="not sent") for o in outcomes]

    async def _sender(self, client: WeComClient, m: Outgoing) -> tuple[str, str, str] | Outcome:
        """(chat type, sender, recipient) of a message: a customer's guide, or a group's owner; else why it cannot go."""
        if m.channel == "wecom_group":
            chat = m.address.get("chat_id")
            if not chat:
                return Outcome("failed", error="not a WeCom customer group (a WeChat group has no API: post it by hand)")
            try:
                return "group", await self._owner(client, chat), chat
            except WeComError as e:
                return _refused(e, f"group {chat}: ")
        sender, customer = m.extra.get("wecom_sender"), m.address.get("wecom_external_userid")
        if not customer:
            return Outcome("failed", error="no WeCom external userid")
        if not sender:
            return Outcome("failed", error="the member's guide has no WeCom userid (guides.csv: wecom_userid)")
        return "single", str(sender), customer

    async def _owner(self, client: WeComClient, chat_id: str) -> str:
        """The userid that owns a customer group (and so sends into it), asked once per transport."""
        owner = self._owners.get(chat_id)
        if owner is None:
            owner = str((await client.group_chat(chat_id))["owner"])
            self._owners[chat_id] = owner
        return owner

    async def _take_quota(self, customers: list[str], month: str, limit: int) -> dict[str, bool]:
        """One mass message of this month per customer (or group), if their quota allows; customer -> granted."""
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


def _refused(e: WeComError, prefix: str = "") -> Outcome:
    """WeCom's refusal as an outcome: busy or rate-limited (or unreachable) is tried again in a minute, anything else fails."""
    temporary = e.errcode in (BUSY, RATE_LIMITED, -2)
    return Outcome("retry" if temporary else "failed", error=f"{prefix}{e}"[:300], retry_after=60.0 if temporary else None)


def from_settings(settings: Any, redis: Redis) -> WeComTaskTransport:
    return WeComTaskTransport(redis, str(settings.wecom_corp_id), str(settings.wecom_secret), base_url=settings.wecom_api,
                              quota=settings.wecom_quota)
