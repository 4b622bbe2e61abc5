"""Engine fixtures: a real database (SQLite file, or PostgreSQL from TEST_DATABASE_URL), a real
Redis (embedded, or TEST_REDIS_URL), a real webhook receiver, and an in-process arq worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from orchestrator.embedded_redis import embedded_redis
from orchestrator.settings import Settings
from orchestrator.store import open_store
from orchestrator.worker import make_worker, pool_for
from tests.engine.receiver import Receiver, RunningReceiver

pytestmark = pytest.mark.db


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    with embedded_redis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture
def redis_url(redis_server: str) -> str:
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        return f"sqlite:///{tmp_path / 'orchestrator.db'}"
    from orchestrator.store import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = open_store(database_url)
    yield e
    e.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with RunningReceiver(Receiver()) as r:
        yield r


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def build(receiver: Receiver | None = None, **extra: str) -> Settings:
        env = {"DATABASE_URL": database_url, "ORCH_DATA_DIR": str(tmp_path / "data")}
        if receiver is not None:
            env |= {"ORCH_WEBHOOK_URL": receiver.url, "ORCH_WEBHOOK_SECRET": receiver.secret, "ORCH_ROUTES": "sms=webhook,email=webhook"}
        env |= extra
        return Settings.from_env(env, env_file=None)
    return build


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, redis_url: str, engine: Engine, max_jobs: int = 10) -> AsyncIterator[Any]:
    """An arq worker of ours running in this event loop until the block ends."""
    worker = make_worker(settings, redis_url, engine=engine, handle_signals=False, max_jobs=max_jobs)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        running = [t for t in worker.tasks.values() if not t.done()]
        if running:  # let jobs in flight end (a drain that sees the event closed): arq's close cancels them
            await asyncio.wait(running, timeout=30)
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def run_step_once(engine: Engine, settings: Settings, redis_url: str, event_id: str, step_id: str, revision: int) -> str:
    """Run one step's job as a worker would (its handler's note, or why it did nothing)."""
    from orchestrator import stages
    from orchestrator.runtime import Runtime

    async def run() -> str:
        async with arq_pool(redis_url) as pool:
            rt = Runtime(settings, engine, pool)
            try:
                return str(await stages.run_step({"rt": rt}, event_id, step_id, revision))
            finally:
                await rt.close()
    return asyncio.run(run())


@contextlib.asynccontextmanager
async def arq_pool(redis_url: str) -> AsyncIterator[Any]:
    pool = await pool_for(redis_url)
    try:
        yield pool
    finally:
        await pool.aclose()


async def until(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Wait for the store to show `check()` true (the engine's own record is the event awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)
