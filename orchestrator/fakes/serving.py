"""An aiohttp.web application on loopback, on a thread and event loop of its own: how every fake
runs beside a test, the demo or `orchestrator rehearse --fake-platforms`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web


class RunningApp:
    """`start()` serves the app on a free loopback port and returns its base URL; `stop()` ends it."""

    def __init__(self, add_routes: Callable[[web.Application], None], **app_options: Any) -> None:
        self.add_routes = add_routes
        self.app_options = app_options
        self.base = ""
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(**self.app_options)
        self.add_routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> str:
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("the fake server did not start")
        return self.base

    def stop(self) -> None:
        async def stop() -> None:
            if self.runner is not None:
                await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
