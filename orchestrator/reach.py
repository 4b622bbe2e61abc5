"""Who a message reaches and through which channel, computed over member *profiles*.

Members with the same segments and the same reachable channels behave the same for planning,
so 100,000 members collapse into a handful of profiles and each step costs O(profiles).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.playbook import Channel, Excluded, Member

SMS, EMAIL, WECOM = 1, 2, 4


@dataclass(frozen=True, slots=True)
class Profile:
    segments: frozenset[str]
    reach: int  # bit set of SMS, EMAIL, WECOM

    def first_channel(self, channels: Iterable[Channel]) -> Channel | None:
        """The first per-member channel in `channels` that reaches this profile."""
        for ch in channels:
            if ch is Channel.SMS and self.reach & SMS:
                return ch
            if ch is Channel.EMAIL and self.reach & EMAIL:
                return ch
            if ch is Channel.WECOM_CUSTOMER and self.reach & WECOM:
                return ch
            if ch in (Channel.WEBHOOK, Channel.CONSOLE):
                return ch
        return None


def reach_bits(m: Member) -> int:
    bits = 0
    if m.phone and m.consent_sms:
        bits |= SMS
    if m.email and m.consent_email:
        bits |= EMAIL
    if m.wecom_external_userid and m.consent_wecom:
        bits |= WECOM
    return bits


def is_excluded(m: Member, ids: set[str], phones: set[str], wecom: set[str]) -> bool:
    return m.id in ids or (m.phone is not None and m.phone in phones) or (
        m.wecom_external_userid is not None and m.wecom_external_userid in wecom
    )


@dataclass(frozen=True)
class Audience:
    """The audience after exclusions, as profile -> number of members."""

    profiles: dict[Profile, int]
    total: int
    excluded: int

    def count(self, segments: Iterable[str] | None) -> int:
        wanted = None if segments is None else set(segments)
        return sum(n for p, n in self.profiles.items() if wanted is None or p.segments & wanted)

    def targeted(self, segments: Iterable[str] | None) -> list[tuple[Profile, int]]:
        wanted = None if segments is None else set(segments)
        return [(p, n) for p, n in self.profiles.items() if wanted is None or p.segments & wanted]


def build_audience(members: Iterable[Member], extra_segments: dict[str, set[str]], excluded: Iterable[Excluded]) -> Audience:
    """Collapse members (minus staff and shills) into profiles."""
    ex = list(excluded)
    ids = {e.id for e in ex}
    phones = {e.phone for e in ex if e.phone}
    wecom = {e.wecom_external_userid for e in ex if e.wecom_external_userid}
    counts: Counter[Profile] = Counter()
    dropped = 0
    for m in members:
        if is_excluded(m, ids, phones, wecom):
            dropped += 1
            continue
        extra = extra_segments.get(m.id)
        segs = frozenset({m.segment} | extra) if extra else frozenset((m.segment,))
        counts[Profile(segs, reach_bits(m))] += 1
    return Audience(dict(counts), sum(counts.values()), dropped)
