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

import orjson

from orchestrator.channels.base import Outcome, Outgoing, Slots, send_pooled
from orchestrator.channels.http1 import HttpError, Http1Pool

TEMPORARY = {408, 425, 429}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for `body` sent at `timestamp`."""
    return _sign(_keyed(secret), timestamp, body)


def _keyed(secret: str) -> hmac.HMAC:
    return hmac.new(secret.encode(), digestmod=hashlib.sha256)


# Each message is signed by a copy of an HMAC already keyed, never by the one-shot `hmac.digest`:
# that call releases the GIL around OpenSSL's work however small the body, so the sending event
# loop then waited for the worker's database threads to hand the GIL back (a switch interval,
# 0.5 ms in the worker, 5 ms by default) on every message. Measured with one other busy thread:
# 212 us a signature one-shot, 3.7 us by copy; py-spy put 14% of a fan-out's event loop there.
def _sign(keyed: hmac.HMAC, timestamp: str, body: bytes) -> str:
    h = keyed.copy()
    h.update(timestamp.encode() + b"." + body)
    return "v1=" + h.hexdigest()


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
        self._keyed = _keyed(secret)
        self.idempotent = idempotent
        self.concurrency = concurrency
        self.timeout = timeout
        self._http: Http1Pool | None = None
        self._slots: Slots | None = None

    def _client(self) -> Http1Pool:
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.loop is not loop:
            self._http = Http1Pool(self.url, limit=self.concurrency, timeout=self.timeout)
        return self._http

    async def send(self, message: Outgoing) -> Outcome:
        body = orjson.dumps(payload(message))  # compact UTF-8 JSON, as json.dumps(ensure_ascii=False, separators=(",", ":")) writes it
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Orchestrator-Timestamp": ts,
                   "X-Orchestrator-Signature": _sign(self._keyed, ts, body)}
        if self.idempotent:
            headers["Idempotency-Key"] = message.key
        try:
            answer = await self._client().post(body, headers)
        except HttpError as e:
            if e.maybe_delivered and not self.idempotent:  # sending it again could make a second message
                return Outcome("unknown", error=f"{e}; the request had gone out, and without an idempotency key it is not sent again"[:300])
            return Outcome("retry", error=str(e)[:300])
        except ValueError as e:  # a header that cannot be sent (a line break in the key): no retry makes it sendable
            return Outcome("failed", error=str(e)[:300])
        status = answer.status
        if 200 <= status < 300:
            return Outcome("sent", provider_id=_provider_id(answer.body))
        try:
            text = answer.body.decode(answer.charset(), errors="replace")
        except LookupError:  # a charset Python does not know
            text = answer.body.decode("utf-8", errors="replace")
        reason = f"HTTP {status}: {text[:200]}"
        if status in TEMPORARY or status >= 500:
            return Outcome("retry", error=reason, retry_after=_retry_after(answer.headers.get("retry-after")))
        return Outcome("failed", error=reason)

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """At most `concurrency` requests in flight across every batch this transport sends at once."""
        return await send_pooled(self, messages, self._pool())

    def _pool(self) -> Slots:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots.loop is not loop:
            self._slots = Slots(self.concurrency, loop)
        return self._slots

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def _provider_id(answer: bytes) -> str | None:
    if not answer:
        return None
    try:
        data = orjson.loads(answer)  # a JSON answer is UTF-8 (RFC 8259)
    except orjson.JSONDecodeError:  # not JSON, not UTF-8, or what orjson refuses (an integer beyond 64 bits)
        try:
            data = json.loads(answer.decode())
        except ValueError:  # UnicodeDecodeError included
            return None
    value = data.get("id") if isinstance(data, dict) else None
    return str(value)[:128] if value is not None else None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
