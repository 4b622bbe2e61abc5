"""Opt-outs recorded: someone said no, by member id or by address, for one channel or all ('*').

An opt-out is global across events and takes effect before the next send: the fan-out reads them
for every batch (`orchestrator.eligibility.optouts_of`). Addresses are kept lower-cased and
trimmed, as they are matched. Recording the same opt-out again (same person or address, channel)
changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, select

from orchestrator.ingest import BadInput
from orchestrator.playbook import Channel
from orchestrator.sheets import normalise_phone
from orchestrator.store import OptOut, utc_now

OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
CHANNELS = ("*", *(c.value for c in Channel))


@dataclass(frozen=True, slots=True)
class Said:
    """One 'no': a member id or an address (phone, e-mail), a channel or '*'."""

    member: str | None
    address: str | None
    channel: str = "*"


def parse(items: list[object], where: str = "optouts") -> list[Said]:
    """Checked opt-outs of an API body's items; BadInput names the first problem and where (as for ingested items)."""
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise BadInput("each opt-out must be an object", at)
        unknown = set(item) - {"member", "address", "channel"}
        if unknown:
            raise BadInput(f"unknown field {sorted(unknown)[0]!r}; an opt-out has member or address, and channel", at)
        member, address, channel = item.get("member"), item.get("address"), item.get("channel", "*")
        for name, value in (("member", member), ("address", address)):
            if value is not None and (not isinstance(value, str) or not value.strip() or len(value) > (64 if name == "member" else 255)):
                raise BadInput(f"'{name}' must be a non-empty string of at most {64 if name == 'member' else 255} characters", f"{at}.{name}")
        if (member is None) == (address is None):
            raise BadInput("give exactly one of 'member' (a member id) or 'address' (a phone number or e-mail address)", at)
        if channel not in CHANNELS:
            raise BadInput(f"'channel' {channel!r} is not one of {', '.join(CHANNELS)}", f"{at}.channel")
        out.append(Said(member.strip() if member else None, _address(address) if address else None, channel))
    return out


def _address(raw: str) -> str:
    """An address as members' are kept: a mainland number without +86 or spaces, anything else lower-cased."""
    return normalise_phone(raw.strip()) or raw.strip().lower()


def record(engine: Engine, said: list[Said], source: str, at: datetime | None = None) -> tuple[int, int]:
    """Store opt-outs not already stored; (recorded, already). One transaction: all or none."""
    recorded = already = 0
    when = at or utc_now()
    with engine.begin() as conn:
        for s in dict.fromkeys(said):  # the same one twice in a batch: once
            who = OPTOUT.c.member_id == s.member if s.member else OPTOUT.c.address == s.address
            covered = and_(who, OPTOUT.c.channel.in_({s.channel, "*"}))  # already said for this channel, or for all
            if conn.execute(select(OPTOUT.c.id).where(covered).limit(1)).first() is not None:
                already += 1
                continue
            conn.execute(OPTOUT.insert().values(member_id=s.member, address=s.address, channel=s.channel, source=source, at=when))
            recorded += 1
    return recorded, already


def listed(engine: Engine, limit: int = 10_000) -> list[dict[str, Any]]:
    """The opt-outs on record, newest first: member, address, channel, source, at."""
    with engine.connect() as conn:
        rows = conn.execute(select(OPTOUT.c.member_id, OPTOUT.c.address, OPTOUT.c.channel, OPTOUT.c.source, OPTOUT.c.at)
                            .order_by(OPTOUT.c.at.desc(), OPTOUT.c.id.desc()).limit(limit)).all()
    return [{"member": m, "address": a, "channel": c, "source": s, "at": at} for m, a, c, s, at in rows]
