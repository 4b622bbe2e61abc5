"""Who gets a message, through which channel, and why everyone else does not.

Evaluated when a preview or reminder step runs, a chunk of the stored audience at a time, against
the store's global consent and opt-outs; a fan-out batch reads the opt-outs of its people again
just before it sends. The order of the reasons is the order of the checks: an excluded account
is reported as excluded even if it also opted out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, or_, select as sql_select

from orchestrator.audience import Person
from orchestrator.playbook import PER_MEMBER_CHANNELS, Channel, Member, Message
from orchestrator.store import Consent, OptOut, reading

CONSENT = Consent.__table__  # type: ignore[attr-defined]
OPTOUT = OptOut.__table__  # type: ignore[attr-defined]

CONSENT_OF = {Channel.SMS: "sms", Channel.EMAIL: "email", Channel.WECOM_CUSTOMER: "wecom"}


@dataclass(frozen=True)
class OptOuts:
    """Opt-outs by member id and by address (phone or e-mail), each for a channel or all ('*')."""

    by_member: dict[str, set[str]] = field(default_factory=dict)
    by_address: dict[str, set[str]] = field(default_factory=dict)

    def blocks(self, member: Member, channel: str) -> bool:
        for chans in (self.by_member.get(member.id), self.by_address.get(member.phone or ""), self.by_address.get((member.email or "").lower()),
                      self.by_address.get((member.wecom_external_userid or "").lower())):
            if chans and ("*" in chans or channel in chans):
                return True
        return False


@dataclass(frozen=True)
class Selection:
    chosen: list[tuple[Member, Channel]]
    skipped: Counter[str]  # reason -> people


def address_of(member: Member, channel: Channel) -> str | None:
    if channel is Channel.SMS:
        return member.phone
    if channel is Channel.EMAIL:
        return member.email
    if channel is Channel.WECOM_CUSTOMER:
        return member.wecom_external_userid
    return member.id  # webhook, console: the brand's own systems know the member by id


def select(people: Iterable[Person], msg: Message, consent: dict[tuple[str, str], bool], optouts: OptOuts) -> Selection:
    """Each targeted person with the first channel that reaches them, with consent and no opt-out."""
    wanted = None if msg.segments is None else set(msg.segments)
    channels = [c for c in msg.channels if c in PER_MEMBER_CHANNELS]
    chosen: list[tuple[Member, Channel]] = []
    skipped: Counter[str] = Counter()
    if not channels:
        return Selection(chosen, skipped)
    for p in people:
        picked, reason = decide(p, wanted, channels, consent, optouts)
        if picked is not None:
            chosen.append((p.member, picked))
        elif reason:
            skipped[reason] += 1
    return Selection(chosen, skipped)


def decide(p: Person, wanted: set[str] | None, channels: Sequence[Channel], consent: dict[tuple[str, str], bool],
           optouts: OptOuts) -> tuple[Channel | None, str]:
    """One person: (the channel that reaches them, "") or (None, why not: excluded, no_address,
    no_consent, opted_out); (None, "") when the message does not target their segments."""
    if wanted is not None and not (p.segments & wanted):
        return None, ""
    if p.excluded:
        return None, "excluded"
    return _first_channel(p.member, channels, consent, optouts)


def consent_of(engine: Engine, member_ids: Sequence[str]) -> dict[tuple[str, str], bool]:
    """The global consent on record for these members: (member, sms|email|wecom) -> granted."""
    consent: dict[tuple[str, str], bool] = {}
    ids = list(member_ids)
    with engine.connect() as conn:
        for i in range(0, len(ids), 900):
            for m, ch, granted in conn.execute(sql_select(CONSENT.c.member_id, CONSENT.c.channel, CONSENT.c.granted)
                                               .where(CONSENT.c.member_id.in_(ids[i:i + 900]))):
                consent[(m, ch)] = bool(granted)
    return consent


def optouts_of(bind: Engine | Connection, members: Sequence[Member]) -> OptOuts:
    """Every opt-out touching these members, by id or by address (phone, e-mail, WeCom external userid), from any event."""
    by_member: dict[str, set[str]] = {}
    by_address: dict[str, set[str]] = {}
    with reading(bind) as conn:
        if conn.execute(sql_select(OPTOUT.c.id).limit(1)).first() is None:  # nobody has opted out anywhere: nothing to match
            return OptOuts(by_member, by_address)
        for i in range(0, len(members), 400):
            part = members[i:i + 400]
            ids = [m.id for m in part]
            addresses = [a for m in part for a in (m.phone, (m.email or "").lower(), (m.wecom_external_userid or "").lower()) if a]
            for m, addr, ch in conn.execute(sql_select(OPTOUT.c.member_id, OPTOUT.c.address, OPTOUT.c.channel)
                                            .where(or_(OPTOUT.c.member_id.in_(ids), OPTOUT.c.address.in_(addresses)))):
                if m:
                    by_member.setdefault(m, set()).add(ch)
                if addr:
                    by_address.setdefault(addr.lower(), set()).add(ch)
    return OptOuts(by_member, by_address)


def _first_channel(m: Member, channels: Iterable[Channel], consent: dict[tuple[str, str], bool], optouts: OptOuts) -> tuple[Channel | None, str]:
    reason = "no_address"
    for ch in channels:
        if address_of(m, ch) is None:
            continue
        kind = CONSENT_OF.get(ch)
        if kind is not None and not consent.get((m.id, kind), False):
            reason = "no_consent" if reason != "opted_out" else reason
            continue
        if optouts.blocks(m, ch.value):
            reason = "opted_out"
            continue
        return ch, ""
    return None, reason
