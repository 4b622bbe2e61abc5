"""A lean HTTP/1.1 client for many small POSTs to one origin: the webhook channel's hot path.

Why not aiohttp here: a webhook fan-out is one request per person, and aiohttp's per-request
machinery (request and response objects, header multidicts, stream readers, payload registry,
timers) cost ~340 µs of CPU a post on our machines, more than the rest of the engine's work per
message together (bench/fanout.py, py-spy --gil: aiohttp was half of the worker's GIL time).
This client keeps what a fan-out needs and nothing else: keep-alive connections to one origin
(http or https), at most `limit` of them, each an asyncio.Protocol whose answers httptools (the
C parser uvicorn serves with) parses; one write per request; one timer per request.

What it does not do, on purpose: redirects (a webhook that moves must be reconfigured, not
followed), proxies, cookies, compression, streaming bodies. Answers larger than `max_answer`
bytes are an error. A request sent on a reused idle connection that the peer had closed (the
keep-alive race: the socket dies before any byte of the answer) is sent again once on a fresh
connection; any other failure is raised as `HttpError` for the caller to classify.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class HttpError(Exception):
    """The request failed before a complete answer came back (connect, reset, timeout, bad answer).

    `maybe_delivered`: the request had gone out, so the peer may have acted on it (a timeout or a
    lost connection while waiting for the answer); False when it never left (no connection)."""

    def __init__(self, message: str, *, maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class _Stale(HttpError):
    """A reused connection died before any byte of the answer: the peer had closed it."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes

    def charset(self) -> str:
        """The answer's declared charset, else UTF-8."""
        for part in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.lower() == "charset" and value:
                return value.strip('"') or "utf-8"
        return "utf-8"


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.timer: asyncio.TimerHandle | None = None  # fails the request at its deadline
        self.reused = False
        self.closed = False
        self.forgotten = False  # the pool no longer counts it
        self._got_bytes = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # bytes nobody asked for: the connection is no longer trustworthy
            self._close()
            return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(HttpError(f"malformed answer: {e}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.waiter is not None and not self.waiter.done():
            if self._status and not self.parser.should_keep_alive() and self._headers.get("content-length") is None \
                    and "chunked" not in self._headers.get("transfer-encoding", ""):
                self._finish()  # an answer whose end is the end of the connection
                return
            why = f"connection lost: {exc}" if exc else "the peer closed the connection"
            self._fail(_Stale(why) if self.reused and not self._got_bytes else HttpError(why))

    # httptools callbacks
    def on_status(self, _status: bytes) -> None:
        self._status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.pool.max_answer:
            self._fail(HttpError(f"answer larger than {self.pool.max_answer} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is None:  # a second answer to one request: the connection cannot be trusted
            self._close()
            return
        if 100 <= self._status < 200:  # an interim answer (100 Continue): the real one follows
            self._status, self._headers, self._body, self._size = 0, {}, [], 0
            return
        self._finish()

    # requests
    def request(self, data: bytes, deadline: float) -> asyncio.Future[Answer]:
        """Write a request; its answer, or HttpError if none is complete by `deadline` (loop time)."""
        assert self.transport is not None
        self.waiter = self.pool.loop.create_future()
        self.timer = self.pool.loop.call_at(deadline, self._expire)
        self._got_bytes = False
        self._status, self._headers, self._body, self._size = 0, {}, [], 0
        self.transport.write(data)
        return self.waiter

    def _expire(self) -> None:
        self.timer = None
        self._fail(HttpError(f"no answer within {self.pool.timeout:g} s", maybe_delivered=True))

    def _finish(self) -> None:
        self._stop_timer()
        waiter, self.waiter = self.waiter, None
        answer = Answer(self._status, self._headers, b"".join(self._body))
        keep = not self.closed and self.parser.should_keep_alive() and self.transport is not None and not self.transport.is_closing()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)
        if keep:
            self.pool._release(self)
        else:
            self._close()

    def _fail(self, error: HttpError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._close()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _close(self) -> None:
        self._stop_timer()
        self.closed = True
        self.pool._forget(self)
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Keep-alive connections to the origin of `url`; `post` sends to its path and query."""

    def __init__(self, url: str, *, limit: int = 50, timeout: float = 10.0, max_answer: int = 1 << 20,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._head = f"POST {target} HTTP/1.1\r\nHost: {host if default_port else f'{host}:{self.port}'}\r\n".encode("ascii")
        self.limit = max(1, limit)
        self.timeout = timeout
        self.max_answer = max_answer
        self.loop = asyncio.get_running_loop()
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def post(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST `body` with `headers` (Host and Content-Length are ours); the answer, or HttpError."""
        lines = []
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name!r} has a line break or colon where it cannot")
            lines.append(f"{name}: {value}\r\n")
        data = b"".join((self._head, "".join(lines).encode(), b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        # One deadline for the whole post. Waiting for a connection (rare: the callers' own limit
        # matches ours) is bounded by asyncio.timeout_at; the request by a timer on its
        # connection, since an asyncio.timeout per request cost ~6% of a fan-out's CPU (py-spy --gil).
        deadline = self.loop.time() + self.timeout
        for _ in range(2):
            conn = self._idle_connection()
            if conn is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        conn = await self._acquire()
                except TimeoutError:
                    raise HttpError(f"no answer within {self.timeout:g} s") from None
            try:
                return await conn.request(data, deadline)
            except _Stale:  # the peer closed its idle connections (a restart, its keep-alive timeout): drop ours
                for idle in list(self._idle):
                    idle._close()
                continue
            except HttpError as e:
                e.maybe_delivered = True
                raise
            except asyncio.CancelledError:
                conn._close()  # the answer may still come: this connection cannot carry another request
                raise
        raise HttpError("the peer closed the connection twice before answering")

    def _idle_connection(self) -> _Connection | None:
        if self._closed:
            return None
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise HttpError("the client is closed")
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    conn.reused = True
                    return conn
            if self._open < self.limit:
                self._open += 1
                try:
                    _transport, conn = await self.loop.create_connection(
                        lambda: _Connection(self), self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
                except OSError as e:
                    self._open -= 1
                    self._wake()
                    raise HttpError(f"cannot connect to {self.host}:{self.port}: {e}") from e
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
                return conn
            waiter = self.loop.create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken and cancelled at once: the place goes to the next in line
                raise

    def _release(self, conn: _Connection) -> None:
        if self._closed:
            conn._close()
            return
        self._idle.append(conn)
        self._wake()

    def _forget(self, conn: _Connection) -> None:
        """A connection closed: its place is free."""
        if conn in self._idle:
            self._idle.remove(conn)
        if not conn.forgotten:
            conn.forgotten = True
            self._open -= 1
            self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        self._closed = True
        for conn in list(self._idle):
            conn._close()
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_result(None)
