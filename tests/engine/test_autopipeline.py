"""The auto-pipeline: concurrent commands share one connection, answers reach their own callers,
cancelled and failed calls never put the connection out of step."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from orchestrator.autopipeline import AutoPipeline

SLOW = "local i = 0 while i < 20000000 do i = i + 1 end return 'slow'"  # holds the connection's answers back a while


def run(redis_url: str, body: object) -> None:
    async def go() -> None:
        redis = Redis.from_url(redis_url)
        pipe = AutoPipeline(redis)
        try:
            await redis.delete("autopipeline:n")
            await body(redis, pipe)  # type: ignore[operator]
        finally:
            await pipe.aclose()
            await redis.delete("autopipeline:n")
            await redis.aclose()

    asyncio.run(go())


def connections(info: dict[str, object]) -> int:
    return int(info["total_connections_received"])  # type: ignore[call-overload]


def test_concurrent_commands_share_one_connection_and_each_gets_its_own_answer(redis_url: str) -> None:
    async def body(redis: Redis, pipe: AutoPipeline) -> None:
        before = connections(await redis.info("stats"))
        answers = await asyncio.gather(*(pipe.execute("INCR", "autopipeline:n") for _ in range(300)))
        assert answers == list(range(1, 301)), "answers come back to their callers in the order the commands were issued"
        assert connections(await redis.info("stats")) - before == 1, "300 calls in flight at once: one connection"
        mixed = await asyncio.gather(pipe.execute("PING"), pipe.execute("INCR", "autopipeline:n", "too", "many"),
                                     pipe.evalsha("0" * 40, 0), pipe.execute("GET", "autopipeline:n"), return_exceptions=True)
        assert mixed[0] == b"PONG" and mixed[3] == b"300"
        assert isinstance(mixed[1], ResponseError) and isinstance(mixed[2], NoScriptError), "an error answer goes to its caller alone"

    run(redis_url, body)


def test_a_call_cancelled_after_its_write_has_its_answer_dropped(redis_url: str) -> None:
    async def body(redis: Redis, pipe: AutoPipeline) -> None:
        slow = asyncio.create_task(pipe.execute("EVAL", SLOW, 0))
        while pipe._line is None or not pipe._line.waiting:  # written: its answer is on its way
            await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert await pipe.execute("PING") == b"PONG", "the next caller reads its own answer, not the cancelled one's"
        assert await pipe.execute("INCR", "autopipeline:n") == 1

    run(redis_url, body)


def test_a_call_cancelled_before_its_write_sends_nothing(redis_url: str) -> None:
    async def body(redis: Redis, pipe: AutoPipeline) -> None:
        assert await pipe.execute("PING") == b"PONG"  # connected
        late = asyncio.create_task(pipe.execute("INCR", "autopipeline:n"))
        await asyncio.sleep(0)  # queued, not yet written: the writer runs on the loop's next turn
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late
        assert await pipe.execute("GET", "autopipeline:n") is None, "the cancelled INCR never reached Redis"

    run(redis_url, body)


def test_a_broken_connection_fails_its_callers_and_the_next_call_reconnects(redis_url: str) -> None:
    async def body(redis: Redis, pipe: AutoPipeline) -> None:
        first = await pipe.execute("CLIENT", "ID")
        await redis.execute_command("CLIENT", "KILL", "ID", first)
        with pytest.raises(RedisConnectionError):
            await pipe.execute("PING")
        second = await pipe.execute("CLIENT", "ID")
        assert second != first, "a new connection"
        assert await pipe.execute("INCR", "autopipeline:n") == 1

    run(redis_url, body)


def test_closing_fails_waiting_callers_and_refuses_new_ones(redis_url: str) -> None:
    async def body(redis: Redis, pipe: AutoPipeline) -> None:
        slow = asyncio.create_task(pipe.execute("EVAL", SLOW, 0))
        while pipe._line is None or not pipe._line.waiting:
            await asyncio.sleep(0)
        await pipe.aclose()
        with pytest.raises(RedisConnectionError):
            await slow
        with pytest.raises(RedisConnectionError, match="closed"):
            await pipe.execute("PING")

    run(redis_url, body)


def test_caps_and_funnel_through_the_pipe_count_as_the_client_does_and_survive_a_script_flush(redis_url: str) -> None:
    """The worker's per-batch scripts go through its auto-pipeline (`run_script`): same answers as
    the client's own call, and a Redis that lost its scripts (restarted) gets them loaded again."""
    from datetime import datetime, timezone

    from orchestrator.funnel import DIRTY, Funnel, Seen
    from orchestrator.limits import Caps

    async def body(redis: Redis, pipe: AutoPipeline) -> None:
        moment = datetime(2027, 3, 20, 12, tzinfo=timezone.utc)
        members = [f"m{i}" for i in range(5)]
        piped, plain = Caps(redis, prefix="autopipeline:capp", pipe=pipe), Caps(redis, prefix="autopipeline:capc")
        try:
            for caps in (piped, plain):
                assert await caps.reserve(members, moment, 2, 10, stored={("m0", "d:2027-03-20"): 2}) == [False, True, True, True, True]
                await redis.script_flush()  # a restarted Redis knows no scripts
                assert await caps.reserve(members, moment, 2, 10, stored={}) == [False, True, True, True, True]
                assert await caps.reserve(members, moment, 2, 10, stored={}) == [False] * 5, "the day's cap of 2 is reached"
                await caps.release(members[1:3], moment)
                await redis.script_flush()
                assert await caps.reserve(members, moment, 2, 10, stored={}) == [False, True, True, False, False], "released places are free again"
            funnel = Funnel(redis, pipe)
            assert await funnel.count("autopipeline-ev", "reminded", [Seen(m) for m in members]) == 5
            await redis.script_flush()
            assert await funnel.count("autopipeline-ev", "reminded", [Seen(m) for m in members[3:] + ["m9"]]) == 1, "each person counted once"
            await pipe.aclose()  # what goes through the pipe now fails: these calls did, the client's do not
            for call in (piped.reserve(members, moment, 2, 10, stored={}), funnel.count("autopipeline-ev", "reminded", [Seen("m8")])):
                with pytest.raises(RedisConnectionError, match="auto-pipeline is closed"):
                    await call
            assert await plain.reserve(["m7"], moment, 2, 10, stored={}) == [True]
        finally:
            keys = [k async for k in redis.scan_iter(match="autopipeline:cap*")] + [k async for k in redis.scan_iter(match="orch:f:autopipeline-ev:*")]
            if keys:
                await redis.delete(*keys)
            await redis.srem(DIRTY, "autopipeline-ev")  # type: ignore[misc]

    run(redis_url, body)


def test_a_worker_runtime_sends_its_caps_calls_through_its_auto_pipeline(redis_url: str, engine: Any,
                                                                       make_settings: Any) -> None:
    from datetime import datetime, timezone

    from orchestrator.runtime import Runtime
    from orchestrator.worker import pool_for

    async def go() -> None:
        pool = await pool_for(redis_url)
        rt = Runtime(make_settings(), engine, pool)
        try:
            moment = datetime(2027, 3, 20, 12, tzinfo=timezone.utc)
            assert await rt.caps.reserve(["m1"], moment, 2, 10, stored={}) == [True]
            await rt.pipe.aclose()
            with pytest.raises(RedisConnectionError, match="auto-pipeline is closed"):
                await rt.caps.reserve(["m1"], moment, 2, 10, stored={})
        finally:
            await rt.close()
            await pool.aclose()

    asyncio.run(go())
