"""web.frames: a frame serialized once is written as it is to a real uvicorn websocket, never past a full buffer or a close."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from orchestrator.webserver import OPTIONS
from web.frames import EXTENSION, text_frame

BIG = "板" * 100_000  # 300 KB a frame: a viewer that does not read fills its buffer within a few


@asynccontextmanager
async def served(endpoint: Any) -> AsyncIterator[str]:
    """`endpoint` as the websocket route of a Starlette app in uvicorn, with the web app's options."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until uvicorn takes them: no need to poll for its start
    options = {k: v for k, v in OPTIONS.items() if k not in ("factory", "loop")}
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[WebSocketRoute("/ws", endpoint)]), lifespan="off", **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
    finally:
        server.should_exit = True
        await task


def test_a_frame_written_once_arrives_as_the_message_it_carries() -> None:
    async def endpoint(ws: WebSocket) -> None:
        write = ws.scope["extensions"][EXTENSION]["write"]
        assert write(text_frame("before")) is False, "nothing goes out before the handshake is accepted"
        await ws.accept()
        for text in ("你好，主播", '{"patch":{"a":1}}', ""):
            assert write(text_frame(text)) is True
        await ws.send_text("through ASGI")  # both ways interleave on one connection
        await ws.receive_text()

    async def run() -> list[str]:
        async with served(endpoint) as url, websockets.connect(url) as ws:
            got = [await ws.recv() for _ in range(4)]
            await ws.send("bye")
            return [str(m) for m in got]

    assert asyncio.run(run()) == ["你好，主播", '{"patch":{"a":1}}', "", "through ASGI"]


def test_a_viewer_that_stops_reading_gets_no_frame_past_its_full_buffer_and_loses_none_before() -> None:
    outcome: dict[str, Any] = {}
    stopped = asyncio.Event()  # the server stopped writing frames

    async def endpoint(ws: WebSocket) -> None:
        write = ws.scope["extensions"][EXTENSION]["write"]
        await ws.accept()
        frame = text_frame(BIG)
        written = 0
        while written < 1000 and write(frame):
            written += 1
            await asyncio.sleep(0)  # let the loop flush what the socket takes
        outcome["written"] = written
        outcome["refused"] = not write(frame)
        stopped.set()
        await ws.send_text("last")  # the ASGI send waits until the viewer reads again
        await ws.close()
        outcome["after_close"] = write(frame)

    async def run() -> list[str]:
        async with served(endpoint) as url, websockets.connect(url, max_size=None, max_queue=1) as ws:
            await stopped.wait()  # the viewer reads nothing meanwhile
            return [str(m) async for m in ws]

    got = asyncio.run(run())
    assert outcome["refused"] and 0 < outcome["written"] < 1000, "writing stopped once the buffer was full"
    assert got == [BIG] * outcome["written"] + ["last"], "every frame written arrived whole, in order, then the ASGI send"
    assert outcome["after_close"] is False
