"""Who will get what, through which channel and transport, and who is left out and why: the
preview and every reminder of an event, evaluated now against the stored audience and the
store's consent and opt-outs, by the same rule the fan-out applies when the step runs.
(`orchestrator audience EVENT`.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import Engine

from orchestrator import audience
from orchestrator.channels.registry import routes
from orchestrator.eligibility import consent_of, decide, optouts_of
from orchestrator.playbook import PER_MEMBER_CHANNELS, Message
from orchestrator.scheduling import get_event, loaded_event
from orchestrator.settings import Settings

@dataclass
class StepView:
    step_id: str
    channels: list[str]
    by_channel: Counter[str] = field(default_factory=Counter)  # channel -> people
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> people
    transports: dict[str, str] = field(default_factory=dict)  # channel -> transport
    groups: list[str] = field(default_factory=list)  # channels that post into groups, not to people (wecom_group)


@dataclass(frozen=True)
class Decision:
    step_id: str
    member_id: str
    name: str
    channel: str | None
    reason: str


def messages(engine: Engine, event_id: str) -> list[tuple[str, Message]]:
    pb = loaded_event(engine, get_event(engine, event_id), members=False).playbook
    return ([("preview", pb.path.preview)] if pb.path.preview else []) + [(f"reminder:{r.id}", r) for r in pb.path.reminders]


def decisions(engine: Engine, event_id: str, only_step: str | None = None) -> Iterator[Decision]:
    """Every targeted person of every message step (or `only_step`), a chunk of the audience at a time."""
    msgs = [(s, m) for s, m in messages(engine, event_id) if only_step in (None, s) and any(c in PER_MEMBER_CHANNELS for c in m.channels)]
    for chunk in audience.chunks(engine, event_id):
        consent = consent_of(engine, [p.member.id for p in chunk])
        optouts = optouts_of(engine, [p.member for p in chunk])
        for step_id, msg in msgs:
            wanted = None if msg.segments is None else set(msg.segments)
            channels = [c for c in msg.channels if c in PER_MEMBER_CHANNELS]
            for p in chunk:
                channel, reason = decide(p, wanted, channels, consent, optouts)
                if channel is not None or reason:
                    yield Decision(step_id, p.member.id, p.member.name, channel.value if channel else None, reason)


def summary(engine: Engine, settings: Settings, event_id: str, only_step: str | None = None) -> list[StepView]:
    ev = get_event(engine, event_id)
    table = routes(settings, ev.mode)
    views = {s: StepView(s, [c.value for c in m.channels], groups=[c.value for c in m.channels if c not in PER_MEMBER_CHANNELS])
             for s, m in messages(engine, event_id) if only_step in (None, s)}
    for v in views.values():
        v.transports.update({c: table.get(c, "none") for c in v.groups})
    for d in decisions(engine, event_id, only_step):
        view = views[d.step_id]
        if d.channel is not None:
            view.by_channel[d.channel] += 1
            view.transports[d.channel] = table.get(d.channel, "none")
        else:
            view.skipped[d.reason] += 1
    return list(views.values())

