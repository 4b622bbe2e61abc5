"""A headless Debian chromium driven over the DevTools protocol, for pages that change while open
(the board): navigate, evaluate JavaScript, wait for a condition, take a screenshot.

Same flags as tests/browser.py, plus `--remote-debugging-port=0`; the port chromium picked is read
from `DevToolsActivePort` in its fresh profile.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import signal
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from tests.browser import FLAGS, require_chromium


class Chromium:
    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        binary = require_chromium()  # skips (or fails, under CI) before anything is made that would need cleaning up
        self.profile = tempfile.TemporaryDirectory(prefix="cdp-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile.name}", "--remote-debugging-port=0",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)  # chromium writes the file when it listens: nothing else to await
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self._connection = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ws = self._connection.__enter__()  # held open across calls, closed in close()
        self.ids = itertools.count(1)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def open(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        found = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return found.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """The value of `expression` once it is truthy (polled: the page's own state is what we await)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"the page never made {expression!r} true")

    def screenshot(self, out: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        """Chromium and every process it started (its own session), then its profile."""
        if hasattr(self, "ws"):
            with contextlib.suppress(Exception):
                self._connection.__exit__(None, None, None)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
                break
            except subprocess.TimeoutExpired:
                continue
        self.profile.cleanup()
