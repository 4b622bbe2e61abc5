"""Aliyun SMS: `SendSms` (API version 2017-05-25), signed V3 (ACS3-HMAC-SHA256) or V1 (HMAC-SHA1).

A message is an approved template (`extra["sms_template"]`), its sign name (`extra["sms_sign"]`)
and the rendered template parameters (`extra["sms_params"]`) for one mainland number. SendSms takes
up to 1,000 numbers with one `TemplateParam` for all of them, so `send_batch` puts into one call
only messages whose template, sign and parameters are all the same; everything else is one call
per message.

Before the platform counts, we count: at most `daily_limit` (50) messages per number per sign and
template per Beijing day, the platform's default for notifications and marketing. A message over
it fails for good and is never sent.

Answers (HTTP status and the JSON `Code`):
    OK                                   sent (BizId is the provider id)
    isv.BUSINESS_LIMIT_CONTROL           retry in an hour (the platform's per-number flow control)
    isv.AMOUNT_NOT_ENOUGH                failed: the account is out of credit
    other isv.*                          failed (bad number, template, sign, parameters, ...)
    SignatureDoesNotMatch, InvalidAccessKeyId*, Forbidden.RAM
                                         a configuration error: failed, logged once, and every
                                         further message of this transport fails at once without a
                                         request (no retry storm) until the worker restarts
    5xx, Throttling*, ServiceUnavailable, connection errors
                                         retry (the request never reached the platform, or the
                                         platform said it did not take it)
    a timeout or a dropped connection after the request went out
                                         unknown: the SMS may have gone out and Aliyun has no
                                         idempotency key, so it is never repeated
Until one answer has passed authentication, calls go out one at a time, so wrong credentials cost
one request, not one per message in flight.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from orchestrator.channels.base import Outcome, Outgoing

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from orchestrator.settings import Settings

log = logging.getLogger("orchestrator.channels.aliyun_sms")

API_VERSION = "2017-05-25"
ACTION = "SendSms"
MAX_NUMBERS = 1000  # PhoneNumbers of one SendSms call
DAILY_LIMIT = 50  # per number, sign and template, a day: the platform's default for notifications and marketing
FLOW_CONTROL_WAIT = 3600.0  # seconds before trying a number the platform's flow control stopped
PHONE = re.compile(r"(?:\+?86)?(1[3-9]\d{9})")
BEIJING = timezone(timedelta(hours=8))
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
V3_ALGORITHM = "ACS3-HMAC-SHA256"
CREDENTIAL_CODES = ("SignatureDoesNotMatch", "InvalidAccessKeyId", "Forbidden.RAM")  # and codes these begin with
UNKNOWN = "outcome unknown"  # the error of a send that may have gone out (state unknown): its per-number place stays taken
PER_NUMBER_CODES = {"isv.MOBILE_NUMBER_ILLEGAL", "isv.BUSINESS_LIMIT_CONTROL"}  # one number's error fails a whole call


# --- signing (pure functions) -------------------------------------------------------------------

def percent_encode(value: str) -> str:
    """RFC 3986 as Aliyun wants it: A-Z a-z 0-9 - _ . ~ kept, every other UTF-8 byte as %XX (space %20, * %2A)."""
    return quote(value, safe="~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Parameters sorted by name, name and value percent-encoded, joined with = and &."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def v3_string_to_sign(method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
                      payload_sha256: str) -> tuple[str, str]:
    """(string to sign, signed header names) of a V3 request: every header given is signed."""
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    names = sorted(lowered)
    signed = ";".join(names)
    canonical_headers = "".join(f"{n}:{lowered[n]}\n" for n in names)
    canonical_uri = quote(path or "/", safe="/~")
    canonical_request = "\n".join([method.upper(), canonical_uri, canonical_query(query), canonical_headers, signed, payload_sha256])
    return f"{V3_ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}", signed


def v3_authorization(access_key_id: str, secret: str, method: str, path: str, query: Mapping[str, str],
                     headers: Mapping[str, str], payload_sha256: str = EMPTY_SHA256) -> str:
    """The `Authorization` header of a V3 (ACS3-HMAC-SHA256) request."""
    string_to_sign, signed = v3_string_to_sign(method, path, query, headers, payload_sha256)
    signature = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()  # not hmac.digest: it releases the GIL (channels/webhook.py)
    return f"{V3_ALGORITHM} Credential={access_key_id},SignedHeaders={signed},Signature={signature}"


def v1_signature(secret: str, method: str, params: Mapping[str, str]) -> str:
    """The `Signature` parameter of a V1 (HMAC-SHA1) request over every other parameter."""
    string_to_sign = f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"
    return base64.b64encode(hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()).decode()


def utc_stamp(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def _host(url: URL) -> str:
    host = url.raw_host or ""
    return host if url.port is None or url.is_default_port() else f"{host}:{url.port}"


def v3_request(api: URL, access_key_id: str, secret: str, params: Mapping[str, str], *, moment: float | None = None,
               nonce: str | None = None, action: str = ACTION) -> tuple[str, URL, dict[str, str]]:
    """(method, URL, headers) of a signed V3 call (SendSms unless `action` says): the parameters in the query, an empty body."""
    headers = {"host": _host(api), "x-acs-action": action, "x-acs-version": API_VERSION,
               "x-acs-date": utc_stamp(time.time() if moment is None else moment),
               "x-acs-signature-nonce": nonce or secrets.token_hex(16), "x-acs-content-sha256": EMPTY_SHA256}
    path = api.raw_path or "/"
    headers["Authorization"] = v3_authorization(access_key_id, secret, "POST", path, params, headers)
    return "POST", _with_query(api, canonical_query(params)), headers


def v1_request(api: URL, access_key_id: str, secret: str, params: Mapping[str, str], *, moment: float | None = None,
               nonce: str | None = None, action: str = ACTION) -> tuple[str, URL, dict[str, str]]:
    """(method, URL, headers) of a signed V1 call (SendSms unless `action` says): every parameter and the signature in the query of a GET."""
    query = {**params, "AccessKeyId": access_key_id, "Action": action, "Format": "JSON", "RegionId": "cn-hangzhou",
             "SignatureMethod": "HMAC-SHA1", "SignatureNonce": nonce or secrets.token_hex(16), "SignatureVersion": "1.0",
             "Timestamp": utc_stamp(time.time() if moment is None else moment), "Version": API_VERSION}
    query["Signature"] = v1_signature(secret, "GET", query)
    return "GET", _with_query(api, canonical_query(query)), {}


def _with_query(api: URL, query: str) -> URL:
    """`api` with exactly this (already encoded) query string: yarl must not encode it again."""
    return URL(f"{api.with_query(None).with_fragment(None)}?{query}", encoded=True)


# --- per-number limits ----------------------------------------------------------------------------

TAKE = """
local limit = tonumber(ARGV[1]); local out = {}
for i = 1, #KEYS do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n < limit then
    redis.call('SET', KEYS[i], n + 1, 'EX', 172800)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

GIVE_BACK = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
return #KEYS
"""


class NumberLimits:
    """Messages per number, sign and template per Beijing day, counted before a send and given back if it did not go out.

    With a Redis client the counts are shared by every worker (one Lua call per batch, so two
    workers cannot both take the last place). Without one they live in this process only: right
    for one worker, while several workers could together send up to `limit` each — the platform's
    own flow control (isv.BUSINESS_LIMIT_CONTROL) then stops the rest.
    """

    def __init__(self, limit: int = DAILY_LIMIT, redis: Redis | None = None, prefix: str = "orch:sms:n") -> None:
        self.limit = limit
        self.redis = redis
        self.prefix = prefix
        self._take = redis.register_script(TAKE) if redis is not None else None
        self._give_back = redis.register_script(GIVE_BACK) if redis is not None else None
        self._day = ""
        self._counts: dict[str, int] = {}

    def key(self, phone: str, sign: str, template: str, now: float | None = None) -> str:
        day = datetime.fromtimestamp(time.time() if now is None else now, BEIJING).strftime("%Y-%m-%d")
        return f"{self.prefix}:{day}:{template}:{sign}:{phone}"

    async def take(self, keys: Sequence[str]) -> list[bool]:
        """For each key (repeats count each time): whether a message may go out, counted if so."""
        if not keys:
            return []
        if self._take is not None:
            return [bool(x) for x in await self._take(keys=list(keys), args=[self.limit])]
        out = []
        for k in keys:
            self._forget_other_days(k)
            n = self._counts.get(k, 0)
            out.append(n < self.limit)
            if n < self.limit:
                self._counts[k] = n + 1
        return out

    async def give_back(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        if self._give_back is not None:
            await self._give_back(keys=list(keys))
            return
        for k in keys:
            if self._counts.get(k, 0) > 0:
                self._counts[k] -= 1

    def _forget_other_days(self, key: str) -> None:
        day = key[len(self.prefix) + 1:len(self.prefix) + 11]
        if day != self._day:
            self._day = day
            self._counts = {k: v for k, v in self._counts.items() if k[len(self.prefix) + 1:len(self.prefix) + 11] == day}


# --- the transport ---------------------------------------------------------------------------------

@dataclass
class _Pool:
    """Requests in flight (at most `concurrency`, shared by every batch of one event loop) and the one-at-a-time probe."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    probe: asyncio.Lock


@dataclass
class _Call:
    template: str
    sign: str
    params: str  # TemplateParam, a JSON string ("" when the template has none)
    entries: list[tuple[int, str, str]]  # (index in the batch, phone, limit key)
    out_id: str | None = None


class AliyunSmsTransport:
    name = "aliyun_sms"
    idempotent = False  # Aliyun has no idempotency key: a send cut off by a crash is marked unknown, never repeated

    def __init__(self, api: str, access_key_id: str, access_key_secret: str, *, signature: str = "v3", concurrency: int = 50,
                 timeout: float = 10.0, daily_limit: int = DAILY_LIMIT, redis: Redis | None = None) -> None:
        if signature not in ("v3", "v1"):
            raise ValueError(f"signature {signature!r}: use 'v3' or 'v1'")
        self.api = URL(api)
        self.access_key_id = access_key_id
        self._secret = access_key_secret
        self.signature = signature
        self.concurrency = max(1, concurrency)
        self.limits = NumberLimits(daily_limit, redis)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._pool_: _Pool | None = None
        self._trusted = False  # an answer has passed authentication: calls may go out concurrently
        self.config_error: str | None = None  # set once: every further message fails without a request

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis | None = None) -> AliyunSmsTransport:
        """The transport of these settings. With the workers' Redis (the registry passes it) per-number
        counts are shared by every worker; without one they are kept in this process (see NumberLimits)."""
        if not (settings.sms_access_key_id and settings.sms_access_key_secret):
            raise ValueError("ORCH_SMS_ACCESS_KEY_ID and ORCH_SMS_ACCESS_KEY_SECRET are both needed for Aliyun SMS")
        return cls(settings.sms_api, settings.sms_access_key_id, settings.sms_access_key_secret, signature=settings.sms_signature,
                   concurrency=settings.concurrency, redis=redis)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency, ttl_dns_cache=300),
                                                  timeout=self._timeout)
        return self._session

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        if self._pool_ is None or self._pool_.loop is not loop:
            self._pool_ = _Pool(loop, asyncio.Semaphore(self.concurrency), asyncio.Lock())
        return self._pool_

    async def send(self, message: Outgoing) -> Outcome:
        return (await self.send_batch([message]))[0]

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """Check each message, take its per-number place, group equal ones into calls and send them, at most `concurrency` at once."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        if self.config_error is not None:
            return [self._config_failure() for _ in messages]
        groups: dict[tuple[str, str, str], list[tuple[int, str, str]]] = {}
        for i, m in enumerate(messages):
            checked = _checked(m)
            if isinstance(checked, Outcome):
                outcomes[i] = checked
                continue
            template, sign, params, phone = checked
            groups.setdefault((template, sign, params), []).append((i, phone, self.limits.key(phone, sign, template)))
        wanted = [e for entries in groups.values() for e in entries]
        granted = await self.limits.take([key for _i, _p, key in wanted])
        refused = {i for (i, _p, _k), ok in zip(wanted, granted, strict=True) if not ok}
        for i in refused:
            outcomes[i] = Outcome("failed", error=f"per-number daily limit ({self.limits.limit}) reached")
        calls: list[_Call] = []
        for (template, sign, params), entries in groups.items():
            entries = [e for e in entries if e[0] not in refused]
            for start in range(0, len(entries), MAX_NUMBERS):
                chunk = entries[start:start + MAX_NUMBERS]
                calls.append(_Call(template, sign, params, chunk, messages[chunk[0][0]].key if len(chunk) == 1 else None))
        given_back: list[str] = []
        pending = iter(calls)
        pool = self._pool()

        async def sender() -> None:
            async with pool.slots:
                for call in pending:
                    try:
                        results = await self._send_call(call, pool)
                    except Exception as e:  # a bug or an unexpected peer: never lose the rows' state
                        results = [Outcome("retry", error=f"{type(e).__name__}: {e}"[:300])] * len(call.entries)
                    for (i, _phone, key), outcome in zip(call.entries, results, strict=True):
                        outcomes[i] = outcome
                        if outcome.state not in ("sent", "unknown"):
                            given_back.append(key)

        senders = min(self.concurrency, len(calls))
        if senders:
            await asyncio.gather(*(sender() for _ in range(senders)))
        await self.limits.give_back(given_back)
        return [o if o is not None else Outcome("retry", error="not sent") for o in outcomes]

    async def _send_call(self, call: _Call, pool: _Pool) -> list[Outcome]:
        """One SendSms call; a per-number error on a call of several numbers sends them again one by one
        (the platform refused the whole call, so nothing of it went out)."""
        outcome, code = await self._guarded(call, pool)
        if code in PER_NUMBER_CODES and len(call.entries) > 1:
            out: list[Outcome] = []
            for entry in call.entries:
                single, _code = await self._guarded(_Call(call.template, call.sign, call.params, [entry]), pool)
                out.append(single)
            return out
        return [outcome] * len(call.entries)

    async def _guarded(self, call: _Call, pool: _Pool) -> tuple[Outcome, str | None]:
        """Until an answer has passed authentication, one call at a time; after a configuration error, none."""
        if not self._trusted:
            async with pool.probe:
                if self.config_error is not None:
                    return self._config_failure(), None
                if not self._trusted:
                    return await self._request(call)
        if self.config_error is not None:
            return self._config_failure(), None
        return await self._request(call)

    async def _request(self, call: _Call) -> tuple[Outcome, str | None]:
        params = {"PhoneNumbers": ",".join(phone for _i, phone, _k in call.entries), "SignName": call.sign, "TemplateCode": call.template}
        if call.params:
            params["TemplateParam"] = call.params
        if call.out_id:
            params["OutId"] = call.out_id[:256]
        build = v3_request if self.signature == "v3" else v1_request
        method, url, headers = build(self.api, self.access_key_id, self._secret, params)
        try:
            async with self._client().request(method, url, headers=headers) as resp:
                answer = await resp.read()
                status = resp.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:  # no connection: the request never left
            return Outcome("retry", error=f"{type(e).__name__}: {e}"[:300]), None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return Outcome("unknown", error=f"{UNKNOWN}: the answer was lost ({type(e).__name__}: {e}); not repeated, as Aliyun "
                                           f"has no idempotency key"[:300]), None
        return self._outcome(status, answer)

    def _outcome(self, status: int, answer: bytes) -> tuple[Outcome, str | None]:
        data: Any = None
        try:
            data = json.loads(answer.decode())
        except ValueError:
            pass
        code = str(data.get("Code", "")) if isinstance(data, dict) else ""
        message = str(data.get("Message", "")) if isinstance(data, dict) else answer.decode(errors="replace")
        reason = f"{code}: {message}"[:300] if code else f"HTTP {status}: {message}"[:300]
        if code == "OK":
            self._trusted = True
            biz = data.get("BizId")
            return Outcome("sent", provider_id=str(biz)[:128] if biz else None), code
        if any(code == c or code.startswith(c + ".") for c in CREDENTIAL_CODES):
            return self._configuration(code, message), code
        if code.startswith("isv."):
            self._trusted = True  # a business answer: the request was authenticated
            if code == "isv.BUSINESS_LIMIT_CONTROL":
                return Outcome("retry", error=reason, retry_after=FLOW_CONTROL_WAIT), code
            if code == "isv.AMOUNT_NOT_ENOUGH":
                return Outcome("failed", error=f"the Aliyun account is out of credit (isv.AMOUNT_NOT_ENOUGH): top it up in the "
                                               f"SMS console; {message}"[:300]), code
            return Outcome("failed", error=reason), code
        if status >= 500 or status == 429 or code.startswith("Throttling") or code in ("ServiceUnavailable", "InternalError"):
            return Outcome("retry", error=reason), code
        return Outcome("failed", error=reason), code

    def _configuration(self, code: str, message: str) -> Outcome:
        if self.config_error is None:
            hint = " (the RAM user needs dysms:SendSms, e.g. AliyunDysmsFullAccess)" if code.startswith("Forbidden") else ""
            self.config_error = (f"configuration: Aliyun answered {code}{hint}; check ORCH_SMS_ACCESS_KEY_ID / "
                                 f"ORCH_SMS_ACCESS_KEY_SECRET")
            log.error("Aliyun SMS %s (%s). Every further SMS of this worker fails without a request until it restarts "
                      "with working credentials.", self.config_error, message[:200])
        return self._config_failure()

    async def ask(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """The JSON answer of one signed call of another action (QuerySmsTemplate, QuerySmsSign).

        Wrong credentials raise ConfigError; no answer (network, timeout) raises ConnectionError.
        """
        from orchestrator.errors import ConfigError

        build = v3_request if self.signature == "v3" else v1_request
        method, url, headers = build(self.api, self.access_key_id, self._secret, params, action=action)
        try:
            async with self._client().request(method, url, headers=headers) as resp:
                answer, status = await resp.read(), resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise ConnectionError(f"Aliyun SMS at {self.api} did not answer {action} ({type(e).__name__}: {e})") from e
        try:
            data = json.loads(answer.decode())
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ConnectionError(f"Aliyun SMS at {self.api} answered {action} with HTTP {status} and no JSON: {answer[:200]!r}")
        code = str(data.get("Code", ""))
        if any(code == c or code.startswith(c + ".") for c in CREDENTIAL_CODES):
            raise ConfigError(f"Aliyun answered {code} to {action}: check ORCH_SMS_ACCESS_KEY_ID / ORCH_SMS_ACCESS_KEY_SECRET"
                              f"{' (the RAM user needs dysms:' + action + ')' if code.startswith('Forbidden') else ''}")
        return data

    def _config_failure(self) -> Outcome:
        return Outcome("failed", error=self.config_error)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def normalized_phone(value: str) -> str | None:
    """A mainland mobile number without +86/86, or None."""
    match = PHONE.fullmatch(value.strip())
    return match.group(1) if match else None


def _checked(m: Outgoing) -> Outcome | tuple[str, str, str, str]:
    """(template, sign, TemplateParam, phone) of a message, or why it cannot be sent (permanently)."""
    raw = m.address.get("phone", "")
    phone = normalized_phone(raw)
    if phone is None:
        return Outcome("failed", error=f"malformed phone number {raw!r}: Aliyun SMS takes mainland mobile numbers (1[3-9] and 9 digits, +86 optional)")
    template = m.extra.get("sms_template")
    if not template:
        return Outcome("failed", error="no SMS template: Aliyun sends only approved templates (add sms: to the message)")
    sign = m.extra.get("sms_sign") or _sign_of(m.text)
    if not sign:
        return Outcome("failed", error="no SMS sign name (签名)")
    params = m.extra.get("sms_params") or {}
    text = json.dumps(params, ensure_ascii=False, separators=(",", ":"), sort_keys=True) if params else ""
    return str(template), str(sign), text, phone


def _sign_of(text: str) -> str | None:
    """The sign of a rendered text "【sign】...", for messages built without extra["sms_sign"]."""
    match = re.match(r"【([^】]+)】", text)
    return match.group(1) if match else None
