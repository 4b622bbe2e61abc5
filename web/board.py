"""The host board: `GET /board/<event>?t=<token>` (the page) and its websocket `/board/<event>/ws?t=`.

Each web process keeps one Redis subscription per event that has viewers here and hands every
published snapshot to each viewer. A viewer holds at most one snapshot waiting: a newer one
replaces it (a slow viewer skips ahead to the latest), and a viewer that cannot take a message
within SEND_WITHIN seconds is dropped, so nobody slows the others. On connect a viewer gets the
latest snapshot at once (from Redis, or built now when the event has none yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from orchestrator.board import channel, publish
from orchestrator.errors import UnknownEvent
from orchestrator.scheduling import get_event
from web.pages import page

log = logging.getLogger("web.board")
SEND_WITHIN = 10.0


class Viewer:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.waiting: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        self.skipped = 0

    def offer(self, text: str) -> None:
        if self.waiting.full():  # never queue more than the latest: skip ahead
            self.waiting.get_nowait()
            self.skipped += 1
        self.waiting.put_nowait(text)


VIEWERS = "orch:viewers:"  # + a process id: a hash event -> viewers connected to that process
BEAT = 5.0  # seconds between two reports of this process's viewers (each kept 3 beats)


class Hub:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.viewers: dict[str, set[Viewer]] = {}
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.key = VIEWERS + secrets.token_hex(6)
        self._changed = asyncio.Event()
        self._beat: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.viewers.values())

    def join(self, event_id: str, viewer: Viewer) -> None:
        self.viewers.setdefault(event_id, set()).add(viewer)
        if event_id not in self.readers:
            self.readers[event_id] = asyncio.create_task(self._read(event_id))
        if self._beat is None:
            self._beat = asyncio.create_task(self._report())
        self._changed.set()

    def leave(self, event_id: str, viewer: Viewer) -> None:
        left = self.viewers.get(event_id, set())
        left.discard(viewer)
        if not left and event_id in self.readers:
            self.readers.pop(event_id).cancel()
            self.viewers.pop(event_id, None)
        self._changed.set()

    async def _report(self) -> None:
        """Keep this process's viewers per event in Redis (for /metrics of any process): at once
        after a change, every BEAT seconds anyway; a process that dies leaves it for 3 beats."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), BEAT)
            self._changed.clear()
            counts = {event_id: len(v) for event_id, v in self.viewers.items() if v}
            try:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self.key)
                    if counts:
                        pipe.hset(self.key, mapping=counts)
                        pipe.expire(self.key, int(3 * BEAT))
                    await pipe.execute()
            except Exception as e:  # Redis away for a moment: the next beat reports again
                log.warning("board viewers not reported: %s", e)

    async def _read(self, event_id: str) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(channel(event_id))
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = message["data"]
                text = data.decode() if isinstance(data, bytes) else str(data)
                for viewer in list(self.viewers.get(event_id, ())):
                    viewer.offer(text)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        for task in [*self.readers.values(), *([self._beat] if self._beat else [])]:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.redis.delete(self.key)


def _allowed(request_event: str, token: str, engine: Any) -> bool:
    try:
        ev = get_event(engine, request_event)
    except UnknownEvent:
        return False
    return bool(ev.board_key) and hmac.compare_digest(str(ev.board_key), token)


async def board_page(request: Request) -> Response:
    event_id = request.path_params["event"]
    if not await asyncio.to_thread(_allowed, event_id, request.query_params.get("t", ""), request.app.state.engine):
        return page(request, "gone.html", {"title": "无权查看", "message": "这个看板链接不对或已失效，请向运营同事要新的链接。", "detail": ""},
                    status_code=403)
    lang = "en" if request.query_params.get("lang") == "en" else "zh"
    return page(request, "board.html", {"event": event_id, "token": request.query_params.get("t", ""), "lang": lang})


async def board_socket(ws: WebSocket) -> None:
    state = ws.app.state
    event_id = ws.path_params["event"]
    if not await asyncio.to_thread(_allowed, event_id, ws.query_params.get("t", ""), state.engine):
        await ws.close(code=4403)
        return
    await ws.accept()
    viewer = Viewer(ws)
    hub: Hub = state.hub
    hub.join(event_id, viewer)
    tasks: list[asyncio.Task[Any]] = []
    try:
        latest = await state.redis.get(channel(event_id))
        if latest is None:
            import json

            latest = json.dumps(await publish(state.redis, state.engine, event_id), ensure_ascii=False)
        viewer.offer(latest.decode() if isinstance(latest, bytes) else latest)
        receiving = asyncio.create_task(ws.receive_text())  # notices a closed connection
        tasks.append(receiving)
        while True:
            sending = asyncio.create_task(viewer.waiting.get())
            tasks.append(sending)
            done, _ = await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
            if receiving in done:
                sending.cancel()
                receiving.result()  # raises WebSocketDisconnect when the viewer left
                receiving = asyncio.create_task(ws.receive_text())
                tasks.append(receiving)
                continue
            try:
                await asyncio.wait_for(ws.send_text(sending.result()), SEND_WITHIN)
            except asyncio.TimeoutError:
                log.warning("board viewer of %s dropped: it took more than %.0f s to take a snapshot", event_id, SEND_WITHIN)
                return
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.leave(event_id, viewer)
        for task in tasks:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
