"""The worker's upkeep finds a step whose sending has stopped (its drain job lost) and only such a step."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from orchestrator import ledger, scheduling
from orchestrator.settings import Settings
from orchestrator.store import Claimer, Event, Send, Step, utc_now
from orchestrator.worker import STALLED_AFTER, _stalled_steps
from tests.engine.conftest import arq_pool
from tests.engine.eventfiles import EventFiles, crowd
from tests.engine.receiver import Receiver

pytestmark = pytest.mark.db
SEND = Send.__table__  # type: ignore[attr-defined]
STEP = Step.__table__  # type: ignore[attr-defined]
CLAIMER = Claimer.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
STEP_ID = "reminder:hour"


def test_only_a_step_with_planned_rows_nothing_in_flight_and_no_recent_claim_is_stalled(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver, make_settings: Callable[..., Settings]) -> None:
    files = EventFiles(people=crowd(4), preview=None, reminders=[("hour", "T-1h", "[sms]")])

    async def scheduled() -> str:
        async with arq_pool(redis_url) as pool:
            return (await scheduling.schedule(engine, pool, make_settings(receiver), files.write(tmp_path / "event"), speed=60)).event_id
    event_id = asyncio.run(scheduled())
    ledger.plan_sends(engine, event_id, STEP_ID, [(f"p{i}", "sms", "webhook") for i in range(1, 5)])
    with engine.begin() as conn:
        conn.execute(update(EVENT).where(EVENT.c.id == event_id).values(state="running"))
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == STEP_ID).values(state="sending"))

    def set_rows(state: str, claimed_ago: timedelta | None, ids: slice) -> None:
        with engine.connect() as conn:
            rows = [r.id for r in conn.execute(SEND.select().where(SEND.c.event_id == event_id, SEND.c.step_id == STEP_ID)
                                               .order_by(SEND.c.id))][ids]
        with engine.begin() as conn:
            conn.execute(update(SEND).where(SEND.c.id.in_(rows)).values(
                state=state, claimed_at=None if claimed_ago is None else utc_now() - claimed_ago))

    assert _stalled_steps(engine) == [(event_id, STEP_ID)]  # planned, never claimed, nothing in flight
    set_rows("sent", STALLED_AFTER + timedelta(seconds=5), slice(0, 1))
    assert _stalled_steps(engine) == [(event_id, STEP_ID)]  # the last claim is older than the limit
    set_rows("sending", timedelta(seconds=60), slice(1, 2))
    assert _stalled_steps(engine) == []  # a send in flight: its worker is on it (or the orphan sweep will be)
    set_rows("sent", timedelta(seconds=2), slice(1, 2))
    assert _stalled_steps(engine) == []  # claimed a moment ago
    set_rows("sent", timedelta(seconds=2), slice(2, 4))
    set_rows("sent", STALLED_AFTER * 2, slice(0, 4))
    assert _stalled_steps(engine) == []  # nothing planned: the step only waits to be closed
    # a worker's claim, recorded as claims are (`claimer`), is a claim a moment ago whatever the rows say
    set_rows("planned", None, slice(0, 4))
    claimed = ledger.claim(engine, event_id, STEP_ID, "w1", 1)
    assert ledger.finish(engine, "w1", [ledger.Result(claimed[0].id, "sent")]) == 1
    set_rows("sent", STALLED_AFTER * 2, slice(0, 1))
    assert _stalled_steps(engine) == []
    with engine.begin() as conn:
        conn.execute(update(CLAIMER).values(last_at=utc_now() - STALLED_AFTER * 2))
    assert _stalled_steps(engine) == [(event_id, STEP_ID)]
