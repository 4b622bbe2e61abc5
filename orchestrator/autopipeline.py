"""Redis commands of many concurrent callers, written together on one kept connection (auto-pipelining).

On these machines a socket write is the dearest part of a small request: with a connection per
call, `writelines` was 30% of a web process serving scans (py-spy). Here every command issued
during one turn of the event loop goes out in one write, and one reader hands the answers back in
order (Redis answers a connection's commands in the order it got them). So 200 scans in flight
cost a few writes, not 200, and no connection is checked out per command. Commands are packed by
hiredis (C): redis-py's asyncio connection packs in Python, 11 µs for a comment batch's script
call against hiredis's 3 (the same bytes).

A caller cancelled before its command is written sends nothing; cancelled after, its answer is
read and dropped (the connection stays in step). An error answer (`NoScriptError`, ...) goes to
its caller alone. A broken connection fails the commands written on it; the next command opens a
new one. Not for blocking commands (BLPOP, ...): they would hold up everyone's answers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError


class _Line:
    """One connection and the callers of the commands written on it, oldest first."""

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.more = asyncio.Event()  # set when `waiting` gains callers
        self.reader: asyncio.Task[None] | None = None
        self.broken = False


class AutoPipeline:
    """`execute` / `evalsha` like the client's, on one connection made from `redis`'s pool settings."""

    def __init__(self, redis: Redis) -> None:
        self._pool = redis.connection_pool
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._line: _Line | None = None
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()  # disconnects under way (a task is kept while it runs)

    async def execute(self, *args: Any) -> Any:
        if self._closed:
            raise RedisConnectionError("the auto-pipeline is closed")
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop())
        self._wake.set()
        return await answer

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = [(args, answer) for args, answer in self._queue if not answer.done()]  # the cancelled send nothing
            self._queue = []
            if not batch:
                continue
            try:
                line = await self._current()
            except Exception as e:  # Redis unreachable: these callers learn it; the next ones try again
                for _args, answer in batch:
                    if not answer.done():
                        answer.set_exception(RedisConnectionError(f"Redis is unreachable: {e}"))
                continue
            line.waiting.extend(answer for _args, answer in batch)
            line.more.set()
            try:
                await line.conn.send_packed_command(b"".join([hiredis.pack_command(args) for args, _answer in batch]), check_health=False)
            except Exception as e:
                self._break(line, e)

    async def _current(self) -> _Line:
        line = self._line
        if line is None or line.broken:
            conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            await conn.connect()  # type: ignore[no-untyped-call]
            line = self._line = _Line(conn)
            line.reader = asyncio.create_task(self._read_loop(line))
        return line

    async def _read_loop(self, line: _Line) -> None:
        while not line.broken:
            if not line.waiting:
                line.more.clear()
                await line.more.wait()
                continue
            error: BaseException | None = None
            try:
                value = await line.conn.read_response(disconnect_on_error=False)
            except ResponseError as e:  # an error answer, read whole: the connection is in step
                error = e
            except asyncio.CancelledError:  # aclose, or the line was broken by a failed write
                self._break(line, RedisConnectionError("closed"))
                raise
            except Exception as e:  # broken or timed out
                self._break(line, e)
                return
            answer = line.waiting.popleft()
            if answer.done():  # its caller was cancelled after the write
                continue
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(value)

    def _break(self, line: _Line, cause: BaseException) -> None:
        """Fail every caller waiting on `line` and close it; the next command opens a new connection."""
        if line.broken:
            return
        line.broken = True
        if self._line is line:
            self._line = None
        while line.waiting:
            answer = line.waiting.popleft()
            if not answer.done():
                answer.set_exception(RedisConnectionError(f"the Redis connection broke: {type(cause).__name__}: {cause}"))
        if line.reader is not None and line.reader is not asyncio.current_task():
            line.reader.cancel()
        closing = asyncio.get_running_loop().create_task(line.conn.disconnect(nowait=True))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
        for _args, answer in self._queue:
            if not answer.done():
                answer.set_exception(RedisConnectionError("the auto-pipeline is closed"))
        self._queue = []
        line, self._line = self._line, None
        if line is not None:
            line.broken = True
            if line.reader is not None:
                line.reader.cancel()
            while line.waiting:
                answer = line.waiting.popleft()
                if not answer.done():
                    answer.set_exception(RedisConnectionError("the auto-pipeline is closed"))
            await line.conn.disconnect()


async def run_script(call: Redis | AutoPipeline, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """`script` (registered on the client) on `keys` and `args`, by its hash through `call`: an
    auto-pipeline (written together with the other callers' commands, packed in C) or the client.
    Where Redis does not have the script (restarted, or its scripts flushed: nothing ran), the
    client loads it and runs it."""
    try:
        return await call.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[misc]
    except NoScriptError:
        return await script(keys=keys, args=args)
