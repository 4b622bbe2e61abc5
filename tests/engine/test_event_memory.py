"""The web processes' short memory of events (`web.ingestapi.Events`): a feed's requests that find
it expired share one lookup; an unknown event is never remembered; a cancellation is seen once the
memory expires."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from orchestrator import scheduling
from orchestrator.errors import UnknownEvent
from orchestrator.settings import Settings
from tests.engine.eventfiles import EventFiles, crowd
from tests.engine.conftest import arq_pool
from tests.engine.test_pool import quiet, schedule
from web.ingestapi import Events

pytestmark = pytest.mark.db


@pytest.fixture
def selects(engine: Engine) -> Iterator[list[str]]:
    """Every lookup of an event by id the store is sent while the test runs."""
    seen: list[str] = []

    def log(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "WHERE event.id =" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", log)
    yield seen
    event.remove(engine, "before_cursor_execute", log)


def test_requests_share_one_lookup_and_an_unknown_or_cancelled_event_is_not_kept(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings], selects: list[str]) -> None:
    settings = quiet(make_settings)
    event_id = schedule(engine, settings, redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))

    async def go() -> None:
        del selects[:]  # scheduling's
        events = Events(engine, ttl=3600)
        found = await asyncio.gather(*(events.get(event_id) for _ in range(50)))
        assert {ev.id for ev in found} == {event_id}
        assert len(selects) == 1, f"50 requests at once made {len(selects)} lookups"
        await events.get(event_id)
        assert len(selects) == 1, "remembered"

        del selects[:]
        missing = await asyncio.gather(*(events.get("no-such-event") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(m, UnknownEvent) for m in missing) and len(selects) == 1
        with pytest.raises(UnknownEvent):
            await events.get("no-such-event")
        assert len(selects) == 2, "an unknown event is looked up again, not remembered"

        impatient = asyncio.ensure_future(events.get("another"))
        patient = asyncio.ensure_future(events.get("another"))
        await asyncio.sleep(0)  # both are waiting for the lookup
        impatient.cancel()
        with pytest.raises(UnknownEvent):
            await patient  # one caller giving up does not cancel the lookup the other waits for

        async with arq_pool(redis_url) as pool:
            await scheduling.cancel(engine, pool, event_id)
        assert (await events.get(event_id)).state != "cancelled", "remembered for ttl seconds"
        fresh = Events(engine, ttl=0)
        assert (await fresh.get(event_id)).state == "cancelled"

    asyncio.run(go())
