"""Who gets a message, through which channel, and why everyone else does not.

Evaluated when a preview or reminder step runs, against the frozen playbook and the store's
global consent and opt-outs. The order of the reasons is the order of the checks: an excluded
account is reported as excluded even if it also opted out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import PER_MEMBER_CHANNELS, Channel, Member, Message
from orchestrator.reach import is_excluded

CONSENT_OF = {Channel.SMS: "sms", Channel.EMAIL: "email", Channel.WECOM_CUSTOMER: "wecom"}


@dataclass(frozen=True)
class OptOuts:
    """Opt-outs by member id and by address (phone or e-mail), each for a channel or all ('*')."""

    by_member: dict[str, set[str]] = field(default_factory=dict)
    by_address: dict[str, set[str]] = field(default_factory=dict)

    def blocks(self, member: Member, channel: str) -> bool:
        for chans in (self.by_member.get(member.id), self.by_address.get(member.phone or ""), self.by_address.get((member.email or "").lower())):
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


def select(loaded: LoadedPlaybook, msg: Message, consent: dict[tuple[str, str], bool], optouts: OptOuts) -> Selection:
    """Each targeted member with the first channel that reaches them, with consent and no opt-out."""
    ex = loaded.excluded
    ids = {e.id for e in ex}
    phones = {e.phone for e in ex if e.phone}
    wecom = {e.wecom_external_userid for e in ex if e.wecom_external_userid}
    wanted = None if msg.segments is None else set(msg.segments)
    channels = [c for c in msg.channels if c in PER_MEMBER_CHANNELS]
    chosen: list[tuple[Member, Channel]] = []
    skipped: Counter[str] = Counter()
    if not channels:
        return Selection(chosen, skipped)
    for m in loaded.members.values():
        if wanted is not None and not (loaded.segments_of(m) & wanted):
            continue
        if is_excluded(m, ids, phones, wecom):
            skipped["excluded"] += 1
            continue
        picked, reason = _first_channel(m, channels, consent, optouts)
        if picked is None:
            skipped[reason] += 1
        else:
            chosen.append((m, picked))
    return Selection(chosen, skipped)


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
