"""Redis calls of the hottest routes on connections they keep, past the client's per-command checkout.

redis-py's asyncio client takes a connection from its pool for every command: an asyncio lock, a
connect check and a non-blocking read to prove the socket is clean, then a release event. On the
scan route that was ~16% of the request (py-spy). `Direct` keeps idle connections of the same
client's settings in a list; a call takes one, writes the command, reads the answer and puts it
back. A connection left with an unread answer (cancelled, timed out, broken) is closed, never
reused; an error answer (`NoScriptError`, ...) is read whole, so that connection stays.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError


class Direct:
    """Commands sent on connections made from `redis`'s pool settings and kept between calls."""

    def __init__(self, redis: Redis, keep: int = 256) -> None:
        self._pool = redis.connection_pool
        self._idle: list[AbstractConnection] = []
        self._keep = keep  # idle connections kept; a burst beyond it makes extra ones, closed after use

    async def execute(self, *args: Any) -> Any:
        conn = self._idle.pop() if self._idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_command(*args)
            answer = await conn.read_response()
        except ResponseError:
            await self._give_back(conn)  # the error answer was read whole: the connection is clean
            raise
        except BaseException:
            await conn.disconnect()
            raise
        await self._give_back(conn)
        return answer

    async def _give_back(self, conn: AbstractConnection) -> None:
        if len(self._idle) < self._keep:
            self._idle.append(conn)
        else:
            await conn.disconnect()

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()
