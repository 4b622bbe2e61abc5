"""Which groups a `wecom_group` message is posted into: one ledger row per group, sent once.

Through WeCom (`wecom_tasks`), the event's customer groups are the chats behind its join ways, as
WeCom reports them (`groupchat/get_join_way`: the groups the playbook named in `path.join.chat_ids`,
those added since, and those WeCom opened when one filled), each a row `chat:<chat id>`; the
groups' owner confirms the task in the app (orchestrator.channels.wecom_tasks). Through another
transport (the console of a rehearsal, the brand's webhook) the event's pool groups are rows too,
`group:<number>`, for whoever posts them. A step run again plans no group twice (the ledger's
unique key), and a group that appears between two messages gets the later one.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Engine

from orchestrator.channels.wecom_tasks import WeComTaskTransport
from orchestrator.load import LoadedPlaybook
from orchestrator.pool import groups_of
from orchestrator.runtime import Runtime
from orchestrator.wecom import WeComError
from orchestrator.wecomjoins import join_ways_of

CHAT = "chat:"  # a WeCom customer group, by chat id: the recipient of a post through WeCom
GROUP = "group:"  # a pool group, by number: posted by whoever the transport reaches


def address(recipient: str) -> dict[str, str]:
    """Where a post's row goes: `{"chat_id": ...}` or `{"group": ...}`."""
    return {"chat_id": recipient[len(CHAT):]} if recipient.startswith(CHAT) else {"group": recipient.removeprefix(GROUP)}


async def targets(rt: Runtime, event_id: str, loaded: LoadedPlaybook, transport: str) -> tuple[list[str], str | None]:
    """Recipient ids of the event's groups for a post through `transport`, and what kept some from
    being known (WeCom not answering: the playbook's own chats are still posted into)."""
    chats = list(loaded.playbook.path.join.chat_ids)
    if transport == "wecom_tasks":
        problem = None
        wecom = rt.transports.get(transport)
        if isinstance(wecom, WeComTaskTransport):  # else the rows wait for a worker that has it
            client = wecom.client()
            try:
                for config_id in (await asyncio.to_thread(join_ways_of, rt.engine, event_id)).values():
                    chats += [str(c) for c in (await client.get_join_way(config_id)).get("chat_id_list") or []]
            except WeComError as e:
                problem = f"the groups behind the join ways could not be read ({e}); posted into path.join.chat_ids only"
        return [CHAT + c for c in dict.fromkeys(chats)], problem
    pool = await asyncio.to_thread(_pool_numbers, rt.engine, event_id)
    return [f"{GROUP}{n}" for n in pool] + [CHAT + c for c in dict.fromkeys(chats)], None


def _pool_numbers(engine: Engine, event_id: str) -> list[int]:
    return [g.number for g in groups_of(engine, event_id)]
