"""What every job of a worker process shares: settings, store, Redis, transports, limits, identity."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from arq.connections import ArqRedis
from sqlalchemy import Engine

from orchestrator.autopipeline import AutoPipeline
from orchestrator.channels.base import Transport
from orchestrator.channels.registry import build_transports, routes
from orchestrator.limits import Caps, RateLimiter
from orchestrator.settings import Settings

T = TypeVar("T")
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
            self.transports = build_transports(self.settings, self.pool)
        self.limiter = RateLimiter(self.pool)
        self.pipe = AutoPipeline(self.pool)  # the fan-out's per-batch scripts (caps, funnel), packed in C
        self.caps = Caps(self.pool, pipe=self.pipe)

    async def db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store call off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    def routes(self, mode: str) -> dict[str, str]:
        return routes(self.settings, mode)

    def idempotent(self) -> dict[str, bool]:
        return {name: t.idempotent for name, t in self.transports.items()}

    async def close(self) -> None:
        for t in self.transports.values():
            await t.close()
        await self.pipe.aclose()
