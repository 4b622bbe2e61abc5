"""The console channel: each message is a line in the event's console log (rehearsals, the demo)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from orchestrator.channels.base import Outcome, Outgoing


class ConsoleTransport:
    """Appends one JSON line per message to `<dir>/<event>.jsonl`. A repeat after a crash harms
    nobody and carries the same key, so the ledger may resend (`idempotent`)."""

    name = "console"
    idempotent = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: Outgoing) -> Outcome:
        return (await self.send_batch([message]))[0]

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        await asyncio.to_thread(self._write, messages)
        return [Outcome("sent") for _ in messages]

    def _write(self, messages: Sequence[Outgoing]) -> None:
        by_event: dict[str, list[str]] = {}
        for m in messages:
            line = {"key": m.key, "step": m.step_id, "channel": m.channel, "member": m.member_id, "name": m.name, "text": m.text}
            by_event.setdefault(m.event_id, []).append(json.dumps(line, ensure_ascii=False))
        self.directory.mkdir(parents=True, exist_ok=True)
        for event_id, lines in by_event.items():
            with (self.directory / f"{event_id}.jsonl").open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")

    async def close(self) -> None:
        return None
