"""Scripts on kept connections: answers, error answers and cancelled calls leave no stale socket behind."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from orchestrator.directredis import Direct


def test_calls_reuse_connections_and_never_reuse_one_with_an_unread_answer(redis_url: str) -> None:
    async def go() -> None:
        redis = Redis.from_url(redis_url)
        direct = Direct(redis, keep=2)
        try:
            await redis.delete("directredis:list")
            assert await direct.execute("PING") == b"PONG"
            assert len(direct._idle) == 1
            with pytest.raises(NoScriptError):
                await direct.evalsha("0" * 40, 0)
            with pytest.raises(ResponseError):
                await direct.execute("INCR", "directredis:list", "too", "many")
            assert len(direct._idle) == 1, "an error answer is read whole: the connection is kept"
            kept = direct._idle[0]
            waiting = asyncio.create_task(direct.execute("BLPOP", "directredis:list", 5))
            while direct._idle:  # the blocked call holds the kept connection
                await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert not direct._idle and not kept.is_connected, "the cancelled call's connection is closed, not kept"
            await redis.rpush("directredis:list", "x")  # would have been the cancelled BLPOP's answer
            assert await direct.execute("LPOP", "directredis:list") == b"x", "a fresh connection reads its own answer"
            answers = await asyncio.gather(*(direct.execute("PING") for _ in range(5)))
            assert answers == [b"PONG"] * 5 and len(direct._idle) == 2, "a burst beyond `keep` closes the extra ones"
        finally:
            await direct.aclose()
            await redis.delete("directredis:list")
            await redis.aclose()

    asyncio.run(go())
