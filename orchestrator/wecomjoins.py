"""The WeCom side of the path: a join way per guide, and joins learned from WeCom's callbacks.

At the join step each guide gets a group live code (`groupchat/add_join_way`, scene 2, creating
the next group when one is full) whose `state` is the playbook's prefix + the guide's channel code;
the scan route shows the scanner's guide's code. When someone joins, WeCom calls back with
`change_external_chat` / `add_member` naming the chat and the new members; `groupchat/get` then
tells each member's `state`, which finds the event and the guide, and the join is recorded once
per person and event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, insert, select

from orchestrator.joins import Joined, record
from orchestrator.load import LoadedPlaybook
from orchestrator.store import Event, JoinWay
from orchestrator.wecom import WeComClient

JOINWAY = JoinWay.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
CUSTOMER = 2  # member_list[].type: 1 staff, 2 external contact


def state_of(loaded: LoadedPlaybook, channel_code: str) -> str:
    return (loaded.playbook.path.join.state_prefix + channel_code)[:30]


def join_ways_of(engine: Engine, event_id: str) -> dict[str, str]:
    """guide id -> config id of the join ways already made."""
    with engine.connect() as conn:
        return {g: c for g, c in conn.execute(select(JOINWAY.c.guide_id, JOINWAY.c.config_id).where(JOINWAY.c.event_id == event_id))}


def _keep(engine: Engine, event_id: str, guide_id: str, state: str, config_id: str, qr_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(insert(JOINWAY).values(event_id=event_id, guide_id=guide_id, state=state, config_id=config_id, qr_url=qr_url,
                                            made_at=datetime.now(timezone.utc)))


async def open_join_ways(client: WeComClient, engine: Engine, event_id: str, loaded: LoadedPlaybook) -> tuple[int, int]:
    """Make the join way of every guide who has none yet (a retried step makes none twice);
    (made now, made before)."""
    join = loaded.playbook.path.join
    have = await asyncio.to_thread(join_ways_of, engine, event_id)
    made = 0
    for guide in loaded.guides:
        if guide.id in have:
            continue
        state = state_of(loaded, guide.channel_code)
        way = await client.add_join_way(state=state, room_base_name=join.group_name.replace("{n}", ""), chat_ids=list(join.chat_ids),
                                        remark=f"{event_id}"[:30])
        await asyncio.to_thread(_keep, engine, event_id, guide.id, state, way.config_id, way.qr_code)
        made += 1
    return made, len(have)


def _ways(engine: Engine, event_id: str) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(c, st) for c, st in conn.execute(select(JOINWAY.c.config_id, JOINWAY.c.state).where(JOINWAY.c.event_id == event_id))]


async def add_chat(client: WeComClient, engine: Engine, event_id: str, loaded: LoadedPlaybook, chat_id: str) -> int:
    """Put a customer group made in the WeCom app behind every join way of the event
    (`update_join_way`); how many were updated. BadGroup when a join way is already full."""
    from orchestrator.pool import BadGroup

    join = loaded.playbook.path.join
    ways = await asyncio.to_thread(_ways, engine, event_id)
    if not ways:
        raise BadGroup(f"event {event_id} has no WeCom join ways yet: they are made at its join step")
    updated = 0
    for config_id, state in ways:
        chats = list((await client.get_join_way(config_id)).get("chat_id_list") or [])
        if chat_id in chats:
            continue
        if len(chats) >= min(5, join.groups_per_join_way):
            raise BadGroup(f"join way {config_id} already holds {len(chats)} groups (at most {min(5, join.groups_per_join_way)}); "
                           f"WeCom opens new ones itself when they fill")
        await client.update_join_way(config_id, state=state, room_base_name=join.group_name.replace("{n}", ""), chat_ids=chats + [chat_id],
                                     remark=event_id[:30])
        updated += 1
    return updated


def _event_of_state(engine: Engine, state: str) -> tuple[str, str] | None:
    """(event id, guide id) of the newest running or scheduled event whose join way has `state`."""
    stmt = (select(JOINWAY.c.event_id, JOINWAY.c.guide_id).join(EVENT, EVENT.c.id == JOINWAY.c.event_id)
            .where(JOINWAY.c.state == state, EVENT.c.state.in_(("scheduled", "running")))
            .order_by(JOINWAY.c.made_at.desc()).limit(1))
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return (row[0], row[1]) if row is not None else None


@dataclass(frozen=True, slots=True)
class Learned:
    new: dict[str, list[Joined]]  # event id -> its new joins
    already: int  # people the event had already counted
    unattributed: int  # new members whose state is none of our join ways (joined another way)

    @property
    def recorded(self) -> int:
        return sum(len(v) for v in self.new.values())


async def on_member_change(client: WeComClient, engine: Engine, message: dict[str, Any]) -> Learned:
    """Record the joins a `change_external_chat` callback announces; anything else is ignored."""
    if message.get("Event") != "change_external_chat" or message.get("ChangeType") != "update" or message.get("UpdateDetail") != "add_member":
        return Learned({}, 0, 0)
    new_members = set(message.get("MemChangeList") or [])
    chat = await client.group_chat(str(message.get("ChatId", "")))
    by_event: dict[str, list[Joined]] = {}
    unattributed = 0
    for member in chat.get("member_list", []):
        if member.get("userid") not in new_members or int(member.get("type", 0)) != CUSTOMER:
            continue
        found = await asyncio.to_thread(_event_of_state, engine, str(member.get("state") or ""))
        if found is None:
            unattributed += 1
            continue
        event_id, guide_id = found
        at = datetime.fromtimestamp(int(member["join_time"]), timezone.utc) if member.get("join_time") else None
        by_event.setdefault(event_id, []).append(Joined(str(member["userid"]), None, guide_id, at))
    new: dict[str, list[Joined]] = {}
    already = 0
    for event_id, joins in by_event.items():
        added, known = await asyncio.to_thread(record, engine, event_id, joins, "wecom")
        if added:
            new[event_id] = added
        already += known
    return Learned(new, already, unattributed)
