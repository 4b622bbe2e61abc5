"""A webhook receiver on loopback that logs every request it gets (a real HTTP peer for the engine).

Runs aiohttp.web on its own thread and event loop. It checks each signature, keeps every
request (raw repeats included), and can honour or ignore `Idempotency-Key`, or fail on purpose.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.channels.webhook import verify
from orchestrator.fakes.serving import RunningApp


@dataclass
class Request:
    key: str | None
    body: dict[str, Any]
    at: float
    signed: bool
    status: int = 200


@dataclass
class Receiver:
    secret: str = "test-secret"
    honour_keys: bool = True
    fail_times: dict[str, int] = field(default_factory=dict)  # member id -> 503s before success
    reject: set[str] = field(default_factory=set)  # member ids answered 422 (permanent)
    delay: float = 0.0
    busy_for: float = 0.0  # seconds from the first request during which every request is answered 503 (Retry-After: 1)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seen: dict[str, str] = field(default_factory=dict)
    _failures: Counter[str] = field(default_factory=Counter)
    _threshold: int = 0
    reached: threading.Event = field(default_factory=threading.Event)

    def notify_at(self, n: int) -> threading.Event:
        """An event set once `n` requests have arrived."""
        self._threshold = n
        self.reached.clear()
        return self.reached

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = verify(self.secret, request.headers.get("X-Orchestrator-Timestamp", ""), body, request.headers.get("X-Orchestrator-Signature", ""))
        data = json.loads(body)
        key = request.headers.get("Idempotency-Key")
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            request_log = Request(key, data, time.time(), signed)
            self.requests.append(request_log)
            if self._threshold and len(self.requests) >= self._threshold:
                self.reached.set()
            if self.busy_for and request_log.at < self.requests[0].at + self.busy_for:
                request_log.status = 503
                return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "1"})
            if not signed:
                request_log.status = 401
                return web.json_response({"error": "bad signature"}, status=401)
            member = data["member"]["id"]
            if member in self.reject:
                request_log.status = 422
                return web.json_response({"error": "unknown customer"}, status=422)
            if self._failures[member] < self.fail_times.get(member, 0):
                self._failures[member] += 1
                request_log.status = 503
                return web.json_response({"error": "busy"}, status=503)
            if key is not None and self.honour_keys and key in self._seen:
                return web.json_response({"id": self._seen[key], "duplicate": True})
            message_id = f"msg-{len(self.requests)}"
            if key is not None:
                self._seen[key] = message_id
        return web.json_response({"id": message_id})

    # what tests read

    def delivered(self) -> list[Request]:
        """Requests that count as a delivery: answered 200, the first time (a honoured repeat is not one)."""
        out, seen = [], set()
        for r in self.requests:
            if r.status != 200:
                continue
            if self.honour_keys and r.key is not None:
                if r.key in seen:
                    continue
                seen.add(r.key)
            out.append(r)
        return out

    def by_step(self) -> dict[str, Counter[str]]:
        """step -> member -> requests received (raw, repeats included)."""
        out: dict[str, Counter[str]] = {}
        for r in self.requests:
            out.setdefault(r.body["step"], Counter())[r.body["member"]["id"]] += 1
        return out


class RunningReceiver:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.app = RunningApp(lambda app: app.router.add_post("/hook", receiver.handle))

    def __enter__(self) -> Receiver:
        self.receiver.url = self.app.start() + "/hook"
        return self.receiver

    def __exit__(self, *exc: object) -> None:
        self.app.stop()
