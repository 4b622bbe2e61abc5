"""The welcome (入群欢迎): the playbook's welcome copy, once to each person who joins an event's group.

Whoever records new joins (the WeCom callback, the joins API) plans a ledger row per new person
(step `welcome`, the first of `path.join.welcome_channels` that reaches them: WeCom joins are
reached as WeCom customers, audience members through their addresses with consent), so a person
reported twice is welcomed once. Every worker sends the planned welcomes of running events in its
upkeep; opt-outs hold, staff are never welcomed, and welcomes, a reply to the person's own step,
do not count against the caps.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select

from orchestrator import audience, ledger
from orchestrator.channels.base import Outgoing
from orchestrator.copytext import render_copy
from orchestrator.fanout import result_of
from orchestrator.eligibility import CONSENT_OF, address_of, consent_of, optouts_of
from orchestrator.joins import Joined
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import Channel, Member
from orchestrator.render import step_renderer
from orchestrator.channels.registry import routes
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings
from orchestrator.store import ChatGroup, Event, Join, Send, utc_now

log = logging.getLogger("orchestrator.worker")
STEP_ID = "welcome"
COPY = ("path", "join", "welcome")
SEND = Send.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
JOIN = Join.__table__  # type: ignore[attr-defined]
GROUP = ChatGroup.__table__  # type: ignore[attr-defined]
BATCH = 200


def _stand_in(person: str, source: str, guide: str | None) -> Member:
    """Someone who joined but is not in the audience file: known by their platform id only."""
    return Member(id=person, name="", segment="", wecom_external_userid=person if source == "wecom" else None, guide=guide)


def plan(engine: Engine, event_id: str, loaded: LoadedPlaybook, joins: Sequence[Joined], source: str, routes: dict[str, str]) -> int:
    """Plan the welcome of each of these (new) joins; returns rows planned."""
    if COPY not in loaded.copies or not joins:
        return 0
    people = audience.people(engine, event_id, [j.person for j in joins])
    members = [people[j.person].member if j.person in people else _stand_in(j.person, source, j.guide) for j in joins]
    consent = consent_of(engine, [m.id for m in members if m.id in people])
    optouts = optouts_of(engine, members)
    rows = []
    for member in members:
        found = people.get(member.id)
        if found is not None and found.excluded:
            continue
        for channel in loaded.playbook.path.join.welcome_channels:
            if channel.value not in routes or address_of(member, channel) is None or optouts.blocks(member, channel.value):
                continue
            needs = CONSENT_OF.get(channel)
            # a WeCom join came to us through the guide's code: its welcome answers that step; others need consent on record
            if needs is not None and not (source == "wecom" and channel is Channel.WECOM_CUSTOMER) and not consent.get((member.id, needs), False):
                continue
            rows.append((member.id, channel.value, routes[channel.value]))
            break
    return ledger.plan_sends(engine, event_id, STEP_ID, rows)


def plan_for(engine: Engine, settings: Settings, event_id: str, joins: Sequence[Joined], source: str) -> int:
    """`plan` for an event by id, through the transports `settings` route its mode to."""
    from orchestrator.scheduling import get_event, loaded_event

    if not joins:
        return 0
    ev = get_event(engine, event_id)
    return plan(engine, event_id, loaded_event(engine, ev, members=False), joins, source, routes(settings, ev.mode))


def events_waiting(engine: Engine) -> list[str]:
    """Running or scheduled events with welcomes planned and due."""
    now = utc_now()
    stmt = (select(SEND.c.event_id).distinct().join(EVENT, EVENT.c.id == SEND.c.event_id)
            .where(SEND.c.step_id == STEP_ID, SEND.c.state == "planned", EVENT.c.state.in_(("scheduled", "running")),
                   (SEND.c.not_before.is_(None)) | (SEND.c.not_before <= now)))
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(stmt)]


def _batch(engine: Engine, worker: str, event_id: str, after: int) -> tuple[list[ledger.Claimed], dict[str, Member], dict[str, dict[str, Any]]]:
    claimed = ledger.claim(engine, event_id, STEP_ID, worker, BATCH, after)
    ids = [c.member_id for c in claimed]
    people = audience.people(engine, event_id, ids)
    with engine.connect() as conn:
        joins = {p: (g, n, s) for p, g, n, s in conn.execute(select(JOIN.c.person, JOIN.c.guide_id, JOIN.c.group_number, JOIN.c.source)
                                                             .where(JOIN.c.event_id == event_id, JOIN.c.person.in_(ids)))}
        names = {n: name for n, name in conn.execute(select(GROUP.c.number, GROUP.c.name).where(GROUP.c.event_id == event_id))}
    members: dict[str, Member] = {}
    groups: dict[str, dict[str, Any]] = {}
    for person in ids:
        guide, number, source = joins.get(person, (None, None, "api"))
        members[person] = people[person].member if person in people else _stand_in(person, source, guide)
        if guide is not None and members[person].guide is None:
            members[person] = dataclasses.replace(members[person], guide=guide)
        groups[person] = {"name": names.get(number, ""), "number": number or 0}
    return claimed, members, groups


async def send_due(rt: Runtime, loaded_of: Any) -> int:
    """Send the planned welcomes of every waiting event; returns how many went out."""
    sent = 0
    for event_id in await rt.db(events_waiting, rt.engine):
        ev, loaded = await loaded_of(event_id)
        renderer = step_renderer(loaded, STEP_ID, ev.live_start)
        base_name = loaded.playbook.path.join.group_name.replace("{n}", "")  # a WeCom group: its number is WeCom's
        after = 0  # the last id claimed: each claim goes on from there (ledger.claim)
        while True:
            claimed, members, groups = await rt.db(_batch, rt.engine, rt.worker_id, event_id, after)
            if not claimed:
                break
            after = claimed[-1].id
            results: list[ledger.Result] = []
            by_transport: dict[str, list[tuple[ledger.Claimed, Outgoing]]] = {}
            for c in claimed:
                member = members[c.member_id]
                ctx = renderer.context(member)
                ctx["group"] = groups[c.member_id] if groups[c.member_id]["name"] else {"name": base_name, "number": 0}
                try:
                    text = render_copy(loaded.copies[COPY].source, ctx)
                except Exception as e:  # broken copy for this person: recorded, never retried
                    results.append(ledger.Result(c.id, "failed", error=f"copy failed: {e}"[:500]))
                    continue
                address = {k: v for k, v in (("phone", member.phone), ("email", member.email),
                                             ("wecom_external_userid", member.wecom_external_userid)) if v}
                by_transport.setdefault(c.transport, []).append(
                    (c, Outgoing(c.key, event_id, STEP_ID, member.id, c.channel, member.name, text, address)))
            for name, items in by_transport.items():
                transport = rt.transports.get(name)
                if transport is None:
                    results += [ledger.Result(c.id, "failed", error=f"transport '{name}' is not configured") for c, _o in items]
                    continue
                outcomes = await transport.send_batch([o for _c, o in items])
                for (c, _o), outcome in zip(items, outcomes, strict=True):
                    results.append(result_of(c, outcome))  # temporary failures come back later, with backoff
                    sent += outcome.state == "sent"
            await rt.db(ledger.finish, rt.engine, rt.worker_id, results)
    if sent:
        log.info("welcomes sent: %d", sent)
    return sent
