"""While Redis cannot be reached, the web app answers 503 with when to try again (never a 500),
in JSON for feeds and platforms, as a page for people; nothing is stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from orchestrator.settings import Settings
from orchestrator.store import Comment, Join
from tests.engine.test_board import board_key
from tests.engine.test_draws import SECRET, comment, signed
from tests.engine.test_pool import codes_of, free_port, pool_event, schedule
from web.app import create_app

pytestmark = pytest.mark.db


def test_requests_while_redis_is_unreachable_get_503_and_when_to_retry(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    from datetime import datetime, timedelta, timezone

    event_id = schedule(engine, make_settings(ORCH_ROUTES="sms=console,email=console", REDIS_URL=redis_url), redis_url,
                        pool_event(tmp_path / "event", groups=1))
    gone = make_settings(ORCH_INGEST_SECRET=SECRET, ORCH_API_TOKEN="tok", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nobody listens
    with TestClient(create_app(gone), raise_server_exceptions=False) as client:
        body, headers = signed({"comments": [comment(1, "u1", "焕新", datetime(2027, 6, 10, 20, 0, tzinfo=timezone(timedelta(hours=8))))]})
        r = client.post(f"/api/events/{event_id}/comments", content=body, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and "send it again" in r.json()["error"], r.text
        r = client.get(f"/s/{codes_of(engine, event_id)[('g1', 'A')]}")
        assert r.status_code == 503 and r.headers["retry-after"] == "5" and "请过几秒钟再扫一次码" in r.text
        r = client.post(f"/api/events/{event_id}/joins", json={"person": "m000001", "group": 1}, headers={"Authorization": "Bearer tok"})
        with client.websocket_connect(f"/board/{event_id}/ws?t={board_key(engine, event_id)}") as ws:  # a host's board
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1013, "try again later: the page reconnects by itself"
        # a join is kept in the store (and its welcome planned) before it is counted: it is taken, not refused,
        # and the board's count of it waits for the recount
        assert r.status_code == 200 and r.json() == {"recorded": 1, "already": 0}, r.text
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Comment.__table__)).scalar_one() == 0  # type: ignore[attr-defined]
        assert conn.execute(select(Join.person).where(Join.event_id == event_id)).scalars().all() == ["m000001"]  # type: ignore[call-overload]

    # Redis is back: a worker's upkeep counts on the board the join it missed, once
    import asyncio

    from redis.asyncio import Redis
    from sqlalchemy import update

    from orchestrator import joins
    from orchestrator.funnel import Funnel
    from orchestrator.store import Event

    with engine.begin() as conn:
        conn.execute(update(Event.__table__).where(Event.__table__.c.id == event_id).values(state="running"))  # type: ignore[attr-defined]

    async def upkeep() -> tuple[int, int, int]:
        redis = Redis.from_url(redis_url)
        try:
            first = await joins.count_missed(redis, engine)
            again = await joins.count_missed(redis, engine)
            return first, again, (await Funnel(redis).figures(event_id, [], []))["totals"]["joined"]
        finally:
            await redis.aclose()
    assert asyncio.run(upkeep()) == (1, 0, 1)
