"""Scheduling, rescheduling and cancelling: what the store and the queue hold, and bad input refused."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from orchestrator import scheduling
from orchestrator.errors import EventConflict, PlaybookError, UnknownEvent
from orchestrator.jobs import QUEUE
from orchestrator.settings import Settings
from orchestrator.store import Member, Step
from tests.engine.conftest import arq_pool
from tests.engine.eventfiles import EventFiles, Person, crowd
from tests.engine.receiver import Receiver

pytestmark = pytest.mark.db
STEP = Step.__table__  # type: ignore[attr-defined]
MEMBER = Member.__table__  # type: ignore[attr-defined]
CST = timezone(timedelta(hours=8))


async def queued(redis_url: str) -> list[str]:
    async with arq_pool(redis_url) as pool:
        return sorted(k.decode() for k in await pool.zrange(QUEUE, 0, -1))


def schedule(engine: Engine, settings: Settings, redis_url: str, path: Path, **kw: object) -> scheduling.Scheduled:
    async def go() -> scheduling.Scheduled:
        async with arq_pool(redis_url) as pool:
            return await scheduling.schedule(engine, pool, settings, path, **kw)  # type: ignore[arg-type]
    return asyncio.run(go())


def test_scheduling_stores_the_frozen_event_and_defers_one_job_per_step(tmp_path: Path, engine: Engine, redis_url: str,
                                                                       make_settings: Callable[..., Settings], receiver: Receiver) -> None:
    path = EventFiles(people=crowd(3), staff=[Person("s1", "员工", "13600000000", sms=True)]).write(tmp_path / "ev")
    result = schedule(engine, make_settings(receiver), redis_url, path)
    assert result.created and result.event_id == "engine-test" and result.jobs == result.steps
    jobs = asyncio.run(queued(redis_url))
    assert "step:engine-test:reminder:hour:r1" in jobs and len(jobs) == result.steps
    with engine.connect() as conn:
        steps = {r.step_id: r for r in conn.execute(select(STEP))}
        members = {r.member_id: r for r in conn.execute(select(MEMBER))}
    assert steps["reminder:hour"].at.astimezone(CST).replace(tzinfo=None) == datetime(2027, 6, 10, 18, 0)
    assert members["s1"].excluded == "staff" and members["m000001"].excluded is None

    again = schedule(engine, make_settings(receiver), redis_url, path)
    assert not again.created and again.jobs == 0 and asyncio.run(queued(redis_url)) == jobs, "scheduling twice changes nothing"


def test_an_invalid_playbook_is_refused_with_the_validators_errors(tmp_path: Path, engine: Engine, redis_url: str,
                                                                  make_settings: Callable[..., Settings], receiver: Receiver) -> None:
    path = EventFiles(people=crowd(2), live_end="2027-06-10 18:00").write(tmp_path / "ev")
    with pytest.raises(PlaybookError) as e:
        schedule(engine, make_settings(receiver), redis_url, path)
    assert [str(d).split("playbook.yaml:")[1] for d in e.value.diagnostics] == [
        "53:10: the live ends (2027-06-10 18:00) before it starts (2027-06-10 19:00); the end must be later"]
    assert asyncio.run(queued(redis_url)) == []
    with pytest.raises(UnknownEvent):
        scheduling.get_event(engine, "engine-test")


def test_a_channel_whose_transport_is_not_configured_is_refused(tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    path = EventFiles(people=crowd(2)).write(tmp_path / "ev")
    with pytest.raises(EventConflict, match="channel 'email' goes through SMTP, but ORCH_SMTP_HOST.*channel 'sms' goes through Aliyun SMS, but ORCH_SMS_ACCESS_KEY_ID"):
        schedule(engine, make_settings(), redis_url, path)
    rehearsal = schedule(engine, make_settings(), redis_url, path, rehearsal=True)
    assert rehearsal.created


def test_an_edit_after_scheduling_changes_nothing_that_runs(tmp_path: Path, engine: Engine, redis_url: str,
                                                           make_settings: Callable[..., Settings], receiver: Receiver) -> None:
    path = EventFiles(people=crowd(2)).write(tmp_path / "ev")
    first = schedule(engine, make_settings(receiver), redis_url, path)
    path.write_text(path.read_text(encoding="utf-8").replace("即将开始", "马上开始"), encoding="utf-8")
    (path.parent / "members.csv").write_text("id,name,phone,consent_sms\nx1,新人,13800000009,1\n", encoding="utf-8")
    with pytest.raises(EventConflict, match="already scheduled with a different playbook"):
        schedule(engine, make_settings(receiver), redis_url, path)
    frozen = scheduling.loaded_event(engine, scheduling.get_event(engine, "engine-test"))
    assert set(frozen.members) == {"m000001", "m000002"}
    assert "即将开始" in frozen.copies[("path", "reminders", 0, "copy")].source
    assert scheduling.get_event(engine, "engine-test").playbook_hash == first.playbook_hash
    other = schedule(engine, make_settings(receiver), redis_url, path, event_id="engine-test-2")
    assert other.created and other.playbook_hash != first.playbook_hash


def test_reschedule_moves_what_has_not_run_and_cancel_stops_it(tmp_path: Path, engine: Engine, redis_url: str,
                                                              make_settings: Callable[..., Settings], receiver: Receiver) -> None:
    path = EventFiles(people=crowd(2)).write(tmp_path / "ev")
    schedule(engine, make_settings(receiver), redis_url, path)

    async def move() -> dict[str, object]:
        async with arq_pool(redis_url) as pool:
            return await scheduling.reschedule(engine, pool, "engine-test", datetime(2027, 6, 17, 19, 0))
    moved = asyncio.run(move())
    assert moved["revision"] == 2
    jobs = asyncio.run(queued(redis_url))
    assert jobs and all(":r2" in j for j in jobs), "the old revision's jobs are gone"
    with engine.connect() as conn:
        at = conn.execute(select(STEP.c.at).where(STEP.c.step_id == "reminder:hour")).scalar_one()
    assert at.astimezone(CST).replace(tzinfo=None) == datetime(2027, 6, 17, 18, 0)

    async def stop() -> dict[str, object]:
        async with arq_pool(redis_url) as pool:
            return await scheduling.cancel(engine, pool, "engine-test")
    result = asyncio.run(stop())
    assert result["steps"] > 0 and asyncio.run(queued(redis_url)) == []
    assert scheduling.get_event(engine, "engine-test").state == "cancelled"
    with pytest.raises(EventConflict, match="cancelled"):
        schedule(engine, make_settings(receiver), redis_url, path)


def test_the_cli_schedules_shows_status_and_refuses_unknown_events(tmp_path: Path, engine: Engine, redis_url: str, receiver: Receiver) -> None:
    path = EventFiles(people=crowd(2)).write(tmp_path / "ev")
    env = dict(os.environ, DATABASE_URL=str(engine.url.render_as_string(hide_password=False)), REDIS_URL=redis_url,
               ORCH_DATA_DIR=str(tmp_path / "data"), ORCH_LANG="en", ORCH_WEBHOOK_URL=receiver.url, ORCH_WEBHOOK_SECRET="s",
               ORCH_ROUTES="sms=webhook,email=webhook")
    env["DATABASE_URL"] = env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args], env=env, capture_output=True, text=True)

    done = run("schedule", str(path))
    assert done.returncode == 0 and "scheduled engine-test" in done.stdout, done.stderr
    status = run("status", "engine-test", "--json")
    data = json.loads(status.stdout)
    assert data["state"] == "scheduled" and {s["id"] for s in data["steps"]} >= {"preview", "reminder:hour", "close"}
    table = run("status", "engine-test")
    assert "reminder:hour" in table.stdout and "scheduled" in table.stdout
    unknown = run("cancel", "no-such-event")
    assert unknown.returncode == 1 and "no event 'no-such-event'; known events: engine-test" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = run("schedule", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 1 and "missing.yaml" in bad.stderr and "Traceback" not in bad.stderr
    cancelled = run("cancel", "engine-test")
    assert cancelled.returncode == 0 and "cancelled engine-test" in cancelled.stdout


def test_the_migration_creates_exactly_the_tables_of_the_model(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from orchestrator.store import METADATA

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), METADATA)
    assert diff == [], "models and migrations differ: add an Alembic revision (docs/operations.md)"
