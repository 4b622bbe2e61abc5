"""How the web app is served: uvicorn's options, in one place for `orchestrator web`, the demo's
own web process, the tests' and the benches'.

- uvloop and httptools (uvicorn's `[standard]` extras): the fastest loop and HTTP parser it has;
- no access log: the app's own logs and /metrics say what matters, without a line per scan;
- websockets through uvicorn's `websockets-sansio` protocol (the websockets library's sans-I/O core;
  the legacy one uvicorn picks by default is deprecated since websockets 14), extended by
  web.frames so the board writes a snapshot's frame, serialized once, to every viewer;
- no per-message deflate on websockets: the board is the only websocket, its messages are the
  parts of a snapshot that changed (~1 KB, ten a second: ~10 KB/s a viewer), and compressing each
  message once per viewer was a fifth of the web process's CPU with 1,000 viewers (bench/board.py).
"""

from __future__ import annotations

import sys
from typing import Any

APP = "web.app:app_from_env"
OPTIONS: dict[str, Any] = {"factory": True, "loop": "uvloop", "http": "httptools", "access_log": False, "log_level": "warning",
                           "ws": "web.frames:FramesProtocol", "ws_per_message_deflate": False}


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line that runs one web process on `port` (for a process of its own)."""
    return [sys.executable, "-m", "uvicorn", APP, "--factory", "--host", host, "--port", str(port), "--loop", OPTIONS["loop"],
            "--http", OPTIONS["http"], "--no-access-log", "--log-level", OPTIONS["log_level"], "--ws", OPTIONS["ws"], "--ws-per-message-deflate", "false"]
