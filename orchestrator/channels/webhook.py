"""The signed JSON webhook: the brand's own system receives each message.

Request: `POST <url>` with a JSON body and
    X-Orchestrator-Timestamp: <unix seconds>
    X-Orchestrator-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
    Idempotency-Key: <event>:<step>:<member>:<channel>   (unless idempotency is off)
The answer decides: 2xx sent (a JSON "id" is kept as the provider id), 408/425/429/5xx and
network errors are temporary (Retry-After is honoured), any other status is a permanent failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Sequence

import aiohttp
import orjson

from orchestrator.channels.base import Outcome, Outgoing, Slots, send_pooled

TEMPORARY = {408, 425, 429}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    return _sign(secret.encode(), timestamp, body)


def _sign(key: bytes, timestamp: str, body: bytes) -> str:
    return "v1=" + hmac.digest(key, timestamp.encode() + b"." + body, hashlib.sha256).hex()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None, window: float = 300) -> bool:
    """What a receiver checks: the signature matches and the timestamp is within `window` seconds."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= window and hmac.compare_digest(sign(secret, timestamp, body), signature)


def payload(m: Outgoing) -> dict[str, object]:
    body: dict[str, object] = {
        "key": m.key, "event": m.event_id, "step": m.step_id, "channel": m.channel,
        "member": {"id": m.member_id, "name": m.name, **m.address}, "text": m.text,
    }
    if m.subject is not None:
        body["subject"] = m.subject
    if m.html is not None:
        body["html"] = m.html
    if m.extra:
        body["extra"] = m.extra
    return body


class WebhookTransport:
    name = "webhook"

    def __init__(self, url: str, secret: str, *, idempotent: bool = True, concurrency: int = 50, timeout: float = 10.0) -> None:
        self.url = url
        self.secret = secret
        self._key = secret.encode()
        self.idempotent = idempotent
        self.concurrency = concurrency
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._slots: Slots | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300), timeout=self._timeout,
                json_serialize=json.dumps,
            )
        return self._session

    async def send(self, message: Outgoing) -> Outcome:
        body = orjson.dumps(payload(message))  # compact UTF-8 JSON, as json.dumps(ensure_ascii=False, separators=(",", ":")) writes it
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Orchestrator-Timestamp": ts,
                   "X-Orchestrator-Signature": _sign(self._key, ts, body)}
        if self.idempotent:
            headers["Idempotency-Key"] = message.key
        try:
            async with self._client().post(self.url, data=body, headers=headers) as resp:
                answer = await resp.read()
                status = resp.status
                if 200 <= status < 300:
                    return Outcome("sent", provider_id=_provider_id(answer))
                reason = f"HTTP {status}: {answer.decode(resp.get_encoding(), errors='replace')[:200]}"
                if status in TEMPORARY or status >= 500:
                    return Outcome("retry", error=reason, retry_after=_retry_after(resp.headers.get("Retry-After")))
                return Outcome("failed", error=reason)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return Outcome("retry", error=f"{type(e).__name__}: {e}"[:300])

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """At most `concurrency` requests in flight across every batch this transport sends at once."""
        return await send_pooled(self, messages, self._pool())

    def _pool(self) -> Slots:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots.loop is not loop:
            self._slots = Slots(self.concurrency, loop)
        return self._slots

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _provider_id(answer: bytes) -> str | None:
    if not answer:
        return None
    try:
        data = json.loads(answer.decode())  # a JSON answer is UTF-8 (RFC 8259); decoding first is the faster path
    except ValueError:  # UnicodeDecodeError included
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return str(value)[:128] if value is not None else None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
