"""The channel interface: send one, send a batch, report each outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to one person through one channel."""

    key: str  # idempotency key: event:step:member:channel
    event_id: str
    step_id: str
    member_id: str
    channel: str
    name: str
    text: str
    address: dict[str, str] = field(default_factory=dict)  # phone, email, wecom_external_userid
    subject: str | None = None
    html: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """`sent`; `created` (a task the platform delivers once a person confirms it: WeCom mass
    messages; followed up by orchestrator.taskwatch); `retry` (temporary: try again later); `failed`
    (permanent); `unknown` (the peer may have it, and sending again could make a second message)."""

    state: Literal["sent", "created", "retry", "failed", "unknown"]
    provider_id: str | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds, when the peer said
    sender: str | None = None  # `created`: who must confirm the task (a WeCom userid), for the board's per-guide count


def backoff(attempts: int, retry_after: float | None) -> float:
    """Seconds before the next try of a `retry` outcome after `attempts` tries: 2, 4, 8, ... up to
    60, or what the peer asked for (`retry_after`)."""
    wait = min(60.0, 2.0 ** attempts)
    return max(wait, retry_after or 0.0)


class Transport(Protocol):
    name: str
    idempotent: bool  # the peer de-duplicates on our key, so a send of unknown outcome may be repeated

    async def send(self, message: Outgoing) -> Outcome: ...

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]: ...

    async def close(self) -> None: ...


class Slots:
    """Requests a transport may have in flight at once, shared by every batch it sends (one event loop)."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = max(1, limit)
        self.loop = loop
        self.semaphore = asyncio.Semaphore(self.limit)


async def send_pooled(transport: Transport, messages: Sequence[Outgoing], slots: Slots) -> list[Outcome]:
    """Send a batch, at most `slots.limit` in flight across every concurrent batch of one transport; an exception is a retry.

    Up to `slots.limit` senders each hold a slot and take the batch's next message until none is
    left, so a message costs no task of its own, and batches sent at once (drain lanes) never have
    more than the limit in flight together: a later batch's senders start as earlier ones finish.
    """
    outcomes: list[Outcome | None] = [None] * len(messages)
    pending = iter(range(len(messages)))

    async def sender() -> None:
        async with slots.semaphore:
            for i in pending:
                try:
                    outcomes[i] = await transport.send(messages[i])
                except Exception as e:  # a bug or an unexpected peer: never lose the row's state
                    outcomes[i] = Outcome("retry", error=f"{type(e).__name__}: {e}")

    senders = min(slots.limit, len(messages))
    if senders == 1:
        await sender()
    elif senders:
        await asyncio.gather(*(sender() for _ in range(senders)))
    return [o if o is not None else Outcome("retry", error="not sent") for o in outcomes]
