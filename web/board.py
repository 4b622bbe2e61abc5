"""The host board: `GET /board/<event>?t=<token>` (the page) and its websocket `/board/<event>/ws?t=`.

Each web process keeps one Redis subscription per event that has viewers here and numbers the
snapshots it gets. A viewer gets the whole snapshot when it connects, then patches: the top-level
parts that changed since the version it has (`{"patch": {...}, "gone": [...]}`). Whatever came
meanwhile, a viewer is sent one message that brings it to the newest (a slow viewer skips ahead),
and one that cannot take a message within SEND_WITHIN seconds is dropped, so nobody slows the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from orchestrator.board import channel, publish
from orchestrator.errors import UnknownEvent
from orchestrator.scheduling import get_event
from web.frames import EXTENSION, text_frame
from web.pages import page

log = logging.getLogger("web.board")
SEND_WITHIN = 10.0


class Screen:
    """What this process last got of an event's snapshot: the text, and each top-level part's JSON,
    numbered, with the few versions before it, so a viewer that has version n gets only the parts
    that changed since n (a "patch"), and one further behind gets the whole snapshot."""

    KEEP = 8

    def __init__(self) -> None:
        self.version = 0
        self.full = ""
        self.parts: dict[str, str] = {}
        self.history: dict[int, dict[str, str]] = {}
        self._patches: dict[int, str] = {}  # from version -> the patch to the current one
        self._frames: dict[str, bytes] = {}  # message -> its websocket frame, serialized once for every viewer

    def take(self, text: str) -> None:
        snap = json.loads(text)
        self.version += 1
        self.full = text
        self.parts = {k: json.dumps(v, ensure_ascii=False, separators=(",", ":")) for k, v in snap.items()}
        self.history[self.version] = self.parts
        self.history.pop(self.version - self.KEEP, None)
        self._patches.clear()
        self._frames.clear()

    def frame_of(self, message: str) -> bytes:
        """`message` as a websocket frame (the same bytes for every viewer it goes to)."""
        frame = self._frames.get(message)
        if frame is None:
            frame = self._frames[message] = text_frame(message)
        return frame

    def message_for(self, has: int) -> str | None:
        """What a viewer holding version `has` (0: nothing) needs to be current; None when it is."""
        if has == self.version:
            return None
        patch = self._patches.get(has)
        if patch is not None:
            return patch
        before = self.history.get(has)
        if before is None:
            return self.full
        changed = [f"{json.dumps(k, ensure_ascii=False)}:{v}" for k, v in self.parts.items() if before.get(k) != v]
        gone = [k for k in before if k not in self.parts]
        patch = '{"patch":{' + ",".join(changed) + "}" + (f',"gone":{json.dumps(gone, ensure_ascii=False)}' if gone else "") + "}"
        self._patches[has] = patch
        return patch


class Viewer:
    """One board websocket: the version it has, and the send still in flight, if any (latest wins:
    however many snapshots came meanwhile, it is then sent one message that brings it to the newest)."""

    def __init__(self, ws: WebSocket, screen: Screen) -> None:
        self.ws = ws
        self.screen = screen
        self.has = 0
        self.sending: asyncio.Task[None] | None = None  # a send that could not finish at once
        self.sending_since = 0.0
        self.visit: asyncio.Task[None] | None = None  # what ends the visit: reading until the viewer leaves
        self.gone = False
        self.write_frame = ws.scope.get("extensions", {}).get(EXTENSION, {}).get("write")  # served by web.frames: frames go out as they are

    def catch_up(self) -> None:
        """Send what brings the viewer to the newest version, unless a send is in flight (it catches up when done).

        Served by web.frames, the message's frame (serialized once for all viewers) is written
        straight to a connection that takes it. Otherwise the send is driven right here: on a
        connection that takes it, uvicorn's send finishes without waiting, so a snapshot goes to
        every viewer in one plain loop (a task per viewer per message costs twice as much:
        ../shared/PERFORMANCE.md). Only a send that has to wait (the viewer's buffer is full)
        becomes a task, which catches up again when it is done.
        """
        if self.sending is not None or self.gone:
            return
        version = self.screen.version
        text = self.screen.message_for(self.has)
        if text is None:
            return
        if self.write_frame is not None and self.write_frame(self.screen.frame_of(text)):
            self.has = version
            return
        send = self.ws.send_text(text)
        try:
            waits_for = send.send(None)
        except StopIteration:
            self.has = version
            return
        except Exception:  # the connection is gone: its visit ends by itself
            self.gone = True
            return
        self.sending_since = asyncio.get_running_loop().time()
        self.sending = asyncio.create_task(self._finish(send, waits_for, version))

    async def _finish(self, send: Any, waits_for: Any, version: int) -> None:
        try:
            while True:
                if waits_for is None:  # a bare yield: the coroutine only let others run
                    await asyncio.sleep(0)
                else:
                    await waits_for
                try:
                    waits_for = send.send(None)
                except StopIteration:
                    break
        except asyncio.CancelledError:
            send.close()
            raise
        except Exception:
            send.close()
            self.gone = True
            return
        self.sending = None
        self.has = version
        self.catch_up()


VIEWERS = "orch:viewers:"  # + a process id: a hash event -> viewers connected to that process
BEAT = 5.0  # seconds between two reports of this process's viewers (each kept 3 beats)


class Hub:
    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.viewers: dict[str, set[Viewer]] = {}
        self.screens: dict[str, Screen] = {}
        self.readers: dict[str, asyncio.Task[None]] = {}
        self.key = VIEWERS + secrets.token_hex(6)
        self._changed = asyncio.Event()
        self._beat: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.viewers.values())

    def screen(self, event_id: str) -> Screen:
        return self.screens.setdefault(event_id, Screen())

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
            self.screens.pop(event_id, None)
        self._changed.set()

    def show(self, event_id: str, text: str) -> None:
        """A new snapshot of the event: every viewer here is sent what it lacks of it."""
        screen = self.screens.get(event_id)
        if screen is None:
            return
        screen.take(text)
        for viewer in list(self.viewers.get(event_id, ())):
            viewer.catch_up()

    async def _report(self) -> None:
        """Keep this process's viewers per event in Redis (for /metrics of any process): at once
        after a change, every BEAT seconds anyway; a process that dies leaves it for 3 beats.
        Also drops the viewers that have been taking a message for more than SEND_WITHIN seconds."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(BEAT, SEND_WITHIN / 2))
            self._changed.clear()
            self._drop_stuck(loop.time())
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

    def _drop_stuck(self, now: float) -> None:
        for event_id, viewers in self.viewers.items():
            for viewer in viewers:
                if viewer.sending is not None and now - viewer.sending_since > SEND_WITHIN and viewer.visit is not None:
                    log.warning("board viewer of %s dropped: it took more than %.0f s to take a snapshot", event_id, SEND_WITHIN)
                    viewer.sending.cancel()
                    viewer.visit.cancel()

    async def _read(self, event_id: str) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(channel(event_id))
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = message["data"]
                self.show(event_id, data.decode() if isinstance(data, bytes) else str(data))
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
    hub: Hub = state.hub
    screen = hub.screen(event_id)
    viewer = Viewer(ws, screen)
    hub.join(event_id, viewer)
    try:
        if not screen.version:  # the first viewer here: the latest snapshot from Redis, or one built now
            latest = await state.redis.get(channel(event_id))
            if not screen.version:
                if latest is None:
                    latest = json.dumps(await publish(state.redis, state.engine, event_id), ensure_ascii=False, separators=(",", ":"))
                hub.show(event_id, latest.decode() if isinstance(latest, bytes) else latest)
        viewer.catch_up()
        viewer.visit = asyncio.create_task(_until_closed(ws))
        await asyncio.wait((viewer.visit,))  # ends when the viewer leaves, or is dropped
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.leave(event_id, viewer)
        for task in (viewer.visit, viewer.sending):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


async def _until_closed(ws: WebSocket) -> None:
    """Read (and ignore) what the viewer sends until it leaves."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
