"""The poster step of a running event: posters made per guide x variant, stored, served, delivered once."""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from orchestrator import posters
from orchestrator.channels.console import ConsoleTransport
from orchestrator.playbook import Guide
from orchestrator.settings import Settings
from orchestrator.store import Event
from tests.engine.test_event_run import run_event, step_states
from tests.engine.test_pool import codes_of, pool_event, quiet
from web.app import create_app

pytestmark = pytest.mark.db
EVENT = Event.__table__  # type: ignore[attr-defined]


def test_the_poster_step_makes_stores_serves_and_delivers_each_guides_posters_once(
        tmp_path: Path, engine: Engine, redis_url: str, receiver: Any, make_settings: Callable[..., Settings]) -> None:
    settings = quiet(make_settings)
    event_id = asyncio.run(run_event(engine, settings, redis_url, pool_event(tmp_path / "event", groups=1)))
    note = step_states(engine, event_id)["poster"].note
    assert note is not None and note.startswith("4 posters (2 guides x 2 variants)") and "sent to 2 guides through console" in note
    codes = codes_of(engine, event_id)
    base = settings.public_url.rstrip("/")

    lines = [json.loads(line) for line in (Path(settings.data_dir) / "console" / f"{event_id}.jsonl").read_text(encoding="utf-8").splitlines()]
    to_guides = {line["member"]: line["text"] for line in lines if line["step"] == "poster"}
    assert set(to_guides) == {"guide:g1", "guide:g2"}
    for (guide, variant), code in codes.items():
        assert f"版本 {variant}：{base}/p/{code}.png" in to_guides[f"guide:{guide}"]

    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as client:
        for code in codes.values():
            r = client.get(f"/p/{code}.png")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            found = [x.text for x in zxingcpp.read_barcodes(Image.open(io.BytesIO(r.content)))]
            assert found == [f"{base}/s/{code}"]
        with engine.connect() as conn:
            key = conn.execute(select(EVENT.c.poster_key).where(EVENT.c.id == event_id)).scalar_one()
        assert f"; page {base}/posters/{event_id}/{key};" in note
        page = client.get(f"/posters/{event_id}/{key}")
        assert page.status_code == 200
        assert sorted(re.findall(r'<img src="[^"]*/p/(\w+)\.png"', page.text)) == sorted(codes.values())
        assert client.get(f"/posters/{event_id}/wrong-key").status_code == 404
        assert client.get("/p/nosuchcode.png").status_code == 404

    # the step again (a retried job): the ledger has each guide's message, nothing goes twice
    guides = [Guide("g1", "小李", "G01"), Guide("g2", "小王", "G02")]
    again = asyncio.run(posters.deliver(engine, event_id, "w-test", guides, {"g1": "x", "g2": "y"}, "console", "console",
                                        ConsoleTransport(Path(settings.data_dir) / "console")))
    assert again == (0, 0)
    after = (Path(settings.data_dir) / "console" / f"{event_id}.jsonl").read_text(encoding="utf-8").splitlines()
    assert sum(json.loads(line)["step"] == "poster" for line in after) == 2


def test_posters_wait_out_a_receiver_that_is_briefly_busy(tmp_path: Path, engine: Engine, redis_url: str,
                                                          make_settings: Callable[..., Settings]) -> None:
    """A guide's poster message answered 503 (Retry-After: 1) is tried again after a pause, not at
    once: the receiver is busy for its first second, and both guides still get their posters."""
    from orchestrator.channels.webhook import WebhookTransport
    from tests.engine.eventfiles import EventFiles, crowd
    from tests.engine.receiver import Receiver, RunningReceiver
    from tests.engine.test_pool import schedule

    event_id = schedule(engine, quiet(make_settings), redis_url, EventFiles(people=crowd(2)).write(tmp_path / "event"))
    guides = [Guide("g1", "小李", "G01"), Guide("g2", "小王", "G02")]
    with RunningReceiver(Receiver(busy_for=1.0)) as busy:
        async def deliver() -> tuple[int, int]:
            transport = WebhookTransport(busy.url, busy.secret)
            try:
                return await posters.deliver(engine, event_id, "w-test", guides, {"g1": "x", "g2": "y"}, "webhook", "webhook", transport)
            finally:
                await transport.close()

        assert asyncio.run(deliver()) == (2, 0)
        statuses = [(r.body["member"]["id"], r.status) for r in busy.requests]
    assert sorted(statuses) == [("guide:g1", 200), ("guide:g1", 503), ("guide:g2", 200), ("guide:g2", 503)], "one busy answer each, then sent"


def test_a_poster_step_too_big_for_one_job_goes_on_where_it_stopped(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """Posters are drawn a chunk at a time and stored as made; a job that has drawn for its budget
    leaves the step `continuing` and its next try draws only the rest. Here each try may draw one
    poster (a budget of 0 s, chunks of 1), as a thousand guides' posters would need several."""
    from orchestrator import stages
    from orchestrator.scheduling import get_event, loaded_event
    from orchestrator.store import LogEntry

    monkeypatch.setattr(stages, "POSTER_BUDGET", 0.0)
    monkeypatch.setattr(stages, "POSTER_CHUNK", 1)
    settings = quiet(make_settings)
    event_id = asyncio.run(run_event(engine, settings, redis_url, pool_event(tmp_path / "event", groups=1)))

    note = step_states(engine, event_id)["poster"].note
    assert note is not None and note.startswith("4 posters (2 guides x 2 variants)") and "sent to 2 guides through console" in note
    log = LogEntry.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        progress = [json.loads(d) for d in conn.execute(select(log.c.data).where(log.c.event_id == event_id, log.c.kind == "poster-progress")
                                                        .order_by(log.c.id)).scalars()]
    assert progress == [{"drawn": 1, "posters": 4}, {"drawn": 2, "posters": 4}, {"drawn": 3, "posters": 4}]  # one more each try, none again
    lines = (Path(settings.data_dir) / "console" / f"{event_id}.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)["member"] for line in lines if json.loads(line)["step"] == "poster") == ["guide:g1", "guide:g2"]

    # every poster is stored with what it was drawn from: the step run again would draw none of them
    ev = get_event(engine, event_id)
    loaded = loaded_event(engine, ev, members=False)
    start = ev.live_start.astimezone(loaded.playbook.tz)
    codes = codes_of(engine, event_id)
    todo, total = posters.to_draw(engine, event_id, loaded, start, codes, settings.public_url, settings.font_path)
    assert (todo, total) == ([], 4)
    with TestClient(create_app(make_settings(REDIS_URL=redis_url))) as client:
        base = settings.public_url.rstrip("/")
        for code in codes.values():
            found = [x.text for x in zxingcpp.read_barcodes(Image.open(io.BytesIO(client.get(f"/p/{code}.png").content)))]
            assert found == [f"{base}/s/{code}"]
    # a later start time is printed on the posters: each would be drawn again
    later, _ = posters.to_draw(engine, event_id, loaded, start.replace(hour=(start.hour + 1) % 24), codes, settings.public_url, settings.font_path)
    assert sorted((t.guide.id, t.variant) for t in later) == sorted(codes)


def test_a_poster_step_takes_as_many_jobs_as_it_needs(tmp_path: Path, engine: Engine, redis_url: str,
                                                      make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """A job hands the rest of its posters to a successor job, not to a retry of itself: 13 guides
    x 2 variants drawn one per job take 26 jobs, past arq's 25 tries of one job, and all are made."""
    from sqlalchemy import update

    from orchestrator import jobs, stages
    from orchestrator.scheduling import STEP, event_clock, get_event, loaded_event
    from orchestrator.store import utc_now
    from tests.engine.conftest import arq_pool, running_worker, until
    from tests.engine.test_pool import schedule

    monkeypatch.setattr(stages, "POSTER_BUDGET", 0.0)
    monkeypatch.setattr(stages, "POSTER_CHUNK", 1)
    settings = quiet(make_settings)
    guides = "id,name,channel_code,contact_code\n" + "".join(f"g{i},导购{i},G{i:02d},wx_{i}\n" for i in range(1, 14))
    event_id = schedule(engine, settings, redis_url, pool_event(tmp_path / "event", groups=1, guides=guides))
    now = utc_now()
    with engine.begin() as conn:  # the poster step is due now (the rest of the event stays days away)
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == "poster").values(at=now))
    step = step_states(engine, event_id)["poster"]

    async def run() -> None:
        async with arq_pool(redis_url) as pool:
            await jobs.enqueue_step(pool, event_clock(get_event(engine, event_id)), event_id, "poster", step.revision, now, suffix=":now")
        async with running_worker(settings, redis_url, engine):
            await until(lambda: step_states(engine, event_id)["poster"].state not in ("scheduled", "running", "continuing"), 120,
                        "the poster step to end")

    asyncio.run(run())
    step = step_states(engine, event_id)["poster"]
    assert step.state == "done", step.note
    assert step.note is not None and step.note.startswith("26 posters (13 guides x 2 variants)")
    ev = get_event(engine, event_id)
    loaded = loaded_event(engine, ev, members=False)
    todo, total = posters.to_draw(engine, event_id, loaded, ev.live_start.astimezone(loaded.playbook.tz), codes_of(engine, event_id),
                                  settings.public_url, settings.font_path)
    assert (todo, total) == ([], 26)  # every poster is stored


@pytest.mark.parametrize("left", ["scheduled", "continuing"])
def test_a_step_left_continuing_is_not_judged_late_again(tmp_path: Path, engine: Engine, redis_url: str,
                                                         make_settings: Callable[..., Settings], left: str) -> None:
    """The lateness policy judges a step when it first runs; the next try of a step its job left
    `continuing` goes on however long the tries took (a poster step two hours past its time and a
    15-minute tolerance: missed when it had not run, finished when it was under way)."""
    from datetime import timedelta

    from sqlalchemy import update

    from orchestrator.scheduling import STEP
    from orchestrator.store import utc_now
    from tests.engine.conftest import run_step_once
    from tests.engine.eventfiles import EventFiles, crowd
    from tests.engine.test_pool import schedule

    settings = quiet(make_settings)
    path = EventFiles(people=crowd(2), policy="late_steps: {action: run_late, tolerance: 15m}").write(tmp_path / "event")
    event_id = schedule(engine, settings, redis_url, path)
    with engine.begin() as conn:
        conn.execute(update(STEP).where(STEP.c.event_id == event_id, STEP.c.step_id == "poster").values(state=left, at=utc_now() - timedelta(hours=2)))
    note = run_step_once(engine, settings, redis_url, event_id, "poster", step_states(engine, event_id)["poster"].revision)
    step = step_states(engine, event_id)["poster"]
    if left == "scheduled":
        assert step.state == "missed" and note.startswith("missed: 2h")
    else:
        assert step.state == "done" and re.match(r"\d+ posters \(", note) and "sent to" in note
