"""`/metrics`: sends by channel and state, queue lag, ingestion rate and lag, board viewers over every web process."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import websockets
from sqlalchemy import Engine

from orchestrator import ledger
from orchestrator.settings import Settings
from tests.engine.conftest import arq_pool
from tests.engine.test_board import board_key
from tests.engine.test_draws import SECRET, comment, signed
from tests.engine.test_pool import WebProcess, pool_event, quiet, schedule


def value(text: str, series: str) -> float | None:
    """The sample of `series` (name and labels, as Prometheus writes them) in a scrape, or None."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


async def scrape_until(url: str, check: Callable[[str], bool], timeout: float = 30.0) -> str:
    """Scrape until `check` holds (what a web process reported to Redis is the event awaited)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(url + "/metrics") as r:
                assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
                text = await r.text()
            if check(text) or time.monotonic() > deadline:
                return text
            await asyncio.sleep(0.1)


def test_metrics_show_sends_queue_lag_ingestion_and_viewers_of_every_process(
        tmp_path: Path, engine: Engine, redis_url: str, database_url: str, make_settings: Callable[..., Settings]) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, pool_event(tmp_path / "event"))
    ledger.plan_sends(engine, event_id, "reminder:r1", [("m000001", "sms", "console"), ("m000002", "sms", "console"), ("m000001", "email", "console")])
    claimed = ledger.claim(engine, event_id, "reminder:r1", "test-worker", 1)
    assert len(claimed) == 1
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(tmp_path / "data"), "ORCH_INGEST_SECRET": SECRET}
    servers = [WebProcess(env), WebProcess(env)]
    try:
        for s in servers:
            s.wait()

        async def go() -> tuple[str, str, str]:
            async with arq_pool(redis_url) as pool:  # a job due five minutes ago that no worker took
                await pool.enqueue_job("nothing", _job_id="metrics-test", _defer_until=datetime.now(timezone.utc) - timedelta(minutes=5))
            at = datetime(2027, 6, 10, 19, 30, tzinfo=timezone.utc)
            async with aiohttp.ClientSession() as http:
                body, headers = signed({"comments": [comment(n, f"u{n}", "好", at) for n in range(3)]})
                for _ in range(2):  # the second time: duplicates, not counted again
                    async with http.post(f"{servers[0].url}/api/events/{event_id}/comments", data=body, headers=headers) as r:
                        assert r.status == 200
            url = f"ws://127.0.0.1:{servers[0].port}/board/{event_id}/ws?t={board_key(engine, event_id)}"
            viewers = f'orchestrator_board_viewers{{event="{event_id}"}}'
            async with websockets.connect(url) as one, websockets.connect(url) as two:
                await one.recv()
                await two.recv()
                watched = await scrape_until(servers[1].url, lambda t: value(t, viewers) == 2)  # seen from the other process
            left = await scrape_until(servers[1].url, lambda t: value(t, viewers) is None)
            return watched, left, await scrape_until(servers[0].url, lambda _t: True)

        watched, left, text = asyncio.run(go())
    finally:
        for s in servers:
            s.stop()
    assert value(watched, f'orchestrator_board_viewers{{event="{event_id}"}}') == 2
    assert value(left, f'orchestrator_board_viewers{{event="{event_id}"}}') is None, "viewers gone: the event is no longer listed"
    assert value(text, f'orchestrator_sends{{channel="sms",event="{event_id}",state="planned"}}') == 1
    assert value(text, f'orchestrator_sends{{channel="sms",event="{event_id}",state="sending"}}') == 1 or \
        value(text, f'orchestrator_sends{{channel="email",event="{event_id}",state="sending"}}') == 1
    assert value(text, "orchestrator_queue_jobs_due") == 1
    lag = value(text, "orchestrator_queue_lag_seconds")
    assert lag is not None and 300 <= lag < 3600, lag
    assert value(text, 'orchestrator_ingested_total{kind="comments"}') == 3, "three stored; the repeat counted nothing"
    assert value(text, 'orchestrator_ingest_waiting{kind="comments"}') == 3, "no worker has moved them into the store"
    ingest_lag = value(text, 'orchestrator_ingest_lag_seconds{kind="comments"}')
    assert ingest_lag is not None and ingest_lag >= 0
    assert value(text, f'orchestrator_scans_total{{event="{event_id}"}}') == 0
    served = set(re.findall(r"^# TYPE (\w+)", text, re.M)) | set(re.findall(r"^(orchestrator_\w+)", text, re.M))
    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana" / "orchestrator.json").read_text(encoding="utf-8"))
    asked = {m for panel in dashboard["panels"] for target in panel.get("targets", []) for m in re.findall(r"orchestrator_\w+", target["expr"])}
    assert asked and asked <= served, f"the Grafana dashboard asks for what /metrics does not serve: {sorted(asked - served)}"
