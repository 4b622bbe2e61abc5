"""What every job of a worker process shares: settings, store, Redis, transports, limits, identity."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from arq.connections import ArqRedis
from sqlalchemy import Engine, select

from orchestrator import ledger
from orchestrator.channels.base import Transport
from orchestrator.channels.registry import build_transports, routes
from orchestrator.eligibility import OptOuts
from orchestrator.limits import Caps, RateLimiter
from orchestrator.settings import Settings
from orchestrator.store import Consent, OptOut

T = TypeVar("T")
CONSENT = Consent.__table__  # type: ignore[attr-defined]
OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
HEARTBEAT = "orch:worker:"


def new_worker_id() -> str:
    return f"{socket.gethostname()[:20]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    pool: ArqRedis
    worker_id: str = field(default_factory=new_worker_id)
    transports: dict[str, Transport] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.transports:
            self.transports = build_transports(self.settings)
        self.limiter = RateLimiter(self.pool)
        self.caps = Caps(self.pool, self._seed_counts)

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def _seed_counts(self, members: Sequence[str], periods: Sequence[str]) -> dict[tuple[str, str], int]:
        result: dict[tuple[str, str], int] = await self.db(ledger.counts_of, self.engine, list(members), list(periods))
        return result

    def routes(self, mode: str) -> dict[str, str]:
        return routes(self.settings, mode)

    def idempotent(self) -> dict[str, bool]:
        return {name: t.idempotent for name, t in self.transports.items()}

    def consent_and_optouts(self, member_ids: Sequence[str]) -> tuple[dict[tuple[str, str], bool], OptOuts]:
        """Global consent of these members and every opt-out touching them (by id or address)."""
        consent: dict[tuple[str, str], bool] = {}
        by_member: dict[str, set[str]] = {}
        by_address: dict[str, set[str]] = {}
        ids = list(member_ids)
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 900):
                part = ids[i:i + 900]
                for m, ch, granted in conn.execute(select(CONSENT.c.member_id, CONSENT.c.channel, CONSENT.c.granted).where(CONSENT.c.member_id.in_(part))):
                    consent[(m, ch)] = bool(granted)
            for m, addr, ch in conn.execute(select(OPTOUT.c.member_id, OPTOUT.c.address, OPTOUT.c.channel)):
                if m:
                    by_member.setdefault(m, set()).add(ch)
                if addr:
                    by_address.setdefault(addr.lower(), set()).add(ch)
        return consent, OptOuts(by_member, by_address)

    async def close(self) -> None:
        for t in self.transports.values():
            await t.close()
