"""A fake Aliyun SMS API on loopback that speaks `SendSms`, `QuerySmsTemplate` and `QuerySmsSign`
(version 2017-05-25) as ../shared/PLATFORMS.md and Aliyun's API reference describe them: V3 (ACS3-HMAC-SHA256, `Authorization` header) and V1 (HMAC-SHA1, `Signature` query
parameter) requests, both checked against the secret it was given.

Signatures are verified by recomputation written here from the public spec, not with the
transport's signer, so a bug in ours shows up as `SignatureDoesNotMatch`. Errors come as Aliyun's
gateway sends them: HTTP 400 `SignatureDoesNotMatch`, 404 `InvalidAccessKeyId.NotFound`, 400
`MissingPhoneNumbers`; business errors as HTTP 200 with a `Code` (`isv.MOBILE_NUMBER_ILLEGAL`,
`isv.BUSINESS_LIMIT_CONTROL` past `daily_limit` per number, sign and template, ...). Given
`templates` and `signs`, it is an account that has those (with their review status) and no others;
without, any template and sign is an approved one.

Tests steer it: `fail_next` queues (code, HTTP status) answers, `hang` delays every answer, and
read `accepted` (one entry per number of each accepted call), `requests` and `counts`. Given
`report_to`, it pushes a delivery receipt (SmsReport, HTTP push mode) for every accepted number to
that URL, as the console's 回执消息 setting makes Aliyun do: `undeliverable` numbers get
`success: false` with a carrier code; a push not answered `{"code": 0}` is pushed again.

Runs on a thread (`RunningAliyunSms`) or in its own process: `python -m orchestrator.fakes.aliyun_sms`
prints its port and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import re
import socket
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from orchestrator.fakes.serving import RunningApp

ACCESS_KEY_ID = "LTAI5tFakeSmsKeyForTests"
ACCESS_KEY_SECRET = "fake-sms-secret-for-tests"
REQUIRED_V3_HEADERS = {"host", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256"}
MAINLAND = re.compile(r"1[3-9][0-9]{9}")
BEIJING = timezone(timedelta(hours=8))
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def encode(value: str) -> str:
    """RFC 3986 percent-encoding, byte by byte (the spec's rule, written out: no library quoting)."""
    return "".join(chr(b) if b in UNRESERVED else f"%{b:02X}" for b in value.encode("utf-8"))


def canonical(params: dict[str, str]) -> str:
    return "&".join(encode(k) + "=" + encode(params[k]) for k in sorted(params))


@dataclass
class Accepted:
    phone: str
    sign: str
    template: str
    params: dict[str, Any]
    out_id: str | None
    biz_id: str
    signature: str  # v3 | v1


@dataclass
class Template:
    """A template of the fake account, as the SMS console shows it (the text without the sign)."""

    content: str
    type: int = 0  # TemplateType: 0 notification, 1 marketing (推广), 2 verification code
    status: int = 1  # TemplateStatus: 0 under review, 1 approved, 2 rejected
    reason: str = ""

    @property
    def params(self) -> set[str]:
        return set(re.findall(r"\$\{(\w+)\}", self.content))


ACTIONS = ("SendSms", "QuerySmsTemplate", "QuerySmsSign")


@dataclass
class FakeAliyunSms:
    access_key_id: str = ACCESS_KEY_ID
    secret: str = ACCESS_KEY_SECRET
    daily_limit: int = 50  # per number, sign and template, a day
    templates: dict[str, Template] | None = None  # the account's templates by code; None: any code is an approved template
    signs: dict[str, int] | None = None  # the account's sign names -> SignStatus (0 under review, 1 approved, 2 rejected); None: any
    hang: float = 0.0  # seconds before each answer
    fail_next: list[tuple[str, int]] = field(default_factory=list)  # (Code, HTTP status) answered to the next requests
    accepted: list[Accepted] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)  # v3 | v1 | unsigned -> requests seen
    answers: Counter[str] = field(default_factory=Counter)  # Code -> times answered
    actions: Counter[str] = field(default_factory=Counter)  # SendSms | QuerySmsTemplate | QuerySmsSign -> authenticated requests
    counts: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # (day, phone, sign, template) -> accepted
    report_to: str | None = None  # URL receipts are pushed to; None: no pushes
    undeliverable: dict[str, tuple[str, str]] = field(default_factory=dict)  # phone -> (err_code, err_msg) its receipt says
    report_delay: float = 0.05  # seconds between a call's answer and its receipts (the carrier's time)
    report_tries: int = 4
    pushes: list[tuple[int, Any]] = field(default_factory=list)  # (HTTP status, answer) of every push made
    base: str = ""
    _nonces: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pushing: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.base + "/"

    def env(self, signature: str = "v3", secret: str | None = None) -> dict[str, str]:
        return {"ORCH_SMS_API": self.url, "ORCH_SMS_ACCESS_KEY_ID": self.access_key_id,
                "ORCH_SMS_ACCESS_KEY_SECRET": self.secret if secret is None else secret, "ORCH_SMS_SIGNATURE": signature}

    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def highest_count(self) -> int:
        with self._lock:
            return max(self.counts.values(), default=0)

    def snapshot(self) -> list[Accepted]:
        with self._lock:
            return list(self.accepted)

    # --- the API ------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang:
            await asyncio.sleep(self.hang)
        query = {k: v for k, v in request.query.items()}
        auth = request.headers.get("Authorization", "")
        if auth.startswith("ACS3-HMAC-SHA256 "):
            kind, problem = "v3", self._check_v3(request, auth, query, body)
            params = query
        elif "Signature" in query:
            kind, problem = "v1", self._check_v1(request.method, query)
            params = {k: v for k, v in query.items() if k not in V1_COMMON}
        else:
            kind, problem = "unsigned", ("IncompleteSignature", 400, "The request signature does not conform to Aliyun standards.")
        with self._lock:
            self.requests[kind] += 1
            injected = self.fail_next.pop(0) if self.fail_next and problem is None else None
        if problem is not None:
            return self._answer(*problem)
        if injected is not None:
            return self._answer(injected[0], injected[1], "injected by the test")
        action = str(request.headers.get("x-acs-action") if kind == "v3" else query.get("Action"))
        with self._lock:
            self.actions[action] += 1
        if action == "QuerySmsTemplate":
            return self._query_template(params)
        if action == "QuerySmsSign":
            return self._query_sign(params)
        return self._send_sms(params, kind)

    def _query_template(self, params: dict[str, str]) -> web.Response:
        code = params.get("TemplateCode", "")
        if not code:
            return self._answer("MissingTemplateCode", 400, "TemplateCode is mandatory for this action.")
        t = Template("") if self.templates is None else self.templates.get(code)  # any: approved, its text not known
        if t is None:
            return self._answer("isv.SMS_TEMPLATE_ILLEGAL", 200, "该账号下找不到对应模板")
        return self._answer("OK", 200, "OK", TemplateCode=code, TemplateStatus=t.status, TemplateType=t.type, TemplateContent=t.content,
                            TemplateName=code, Reason=t.reason, CreateDate="2026-11-01 10:00:00")

    def _query_sign(self, params: dict[str, str]) -> web.Response:
        name = params.get("SignName", "")
        if not name:
            return self._answer("MissingSignName", 400, "SignName is mandatory for this action.")
        status = 1 if self.signs is None else self.signs.get(name)
        if status is None:
            return self._answer("isv.SMS_SIGNATURE_ILLEGAL", 200, "该账号下找不到对应签名")
        return self._answer("OK", 200, "OK", SignName=name, SignStatus=status, Reason="", CreateDate="2026-11-01 10:00:00")

    def _answer(self, code: str, status: int, message: str, **extra: Any) -> web.Response:
        with self._lock:
            self.answers[code] += 1
        return web.json_response({"Code": code, "Message": message, "RequestId": str(uuid.uuid4()).upper(), **extra}, status=status)

    def _check_v3(self, request: web.Request, auth: str, query: dict[str, str], body: bytes) -> tuple[str, int, str] | None:
        fields = dict(part.split("=", 1) for part in auth[len("ACS3-HMAC-SHA256 "):].split(",") if "=" in part)
        if fields.get("Credential") != self.access_key_id:
            return "InvalidAccessKeyId.NotFound", 404, "Specified access key is not found."
        signed = fields.get("SignedHeaders", "").split(";")
        if not REQUIRED_V3_HEADERS <= set(signed) or signed != sorted(signed):
            return "IncompleteSignature", 400, f"SignedHeaders must list, sorted, at least {sorted(REQUIRED_V3_HEADERS)}"
        h = request.headers
        if h.get("x-acs-action") not in ACTIONS or h.get("x-acs-version") != "2017-05-25":
            return "InvalidAction.NotFound", 404, "Specified api is not found, please check your url and method."
        if h.get("x-acs-content-sha256") != hashlib.sha256(body).hexdigest():
            return "ContentSHA256NotMatched", 400, "The content sha256 of the request does not match its body."
        problem = self._fresh(h.get("x-acs-date", ""), h.get("x-acs-signature-nonce", ""))
        if problem:
            return problem
        path = request.raw_path.split("?", 1)[0] or "/"
        canonical_headers = "".join(f"{name}:{h.get(name, '').strip()}\n" for name in signed)
        canonical_request = f"{request.method}\n{path}\n{canonical(query)}\n{canonical_headers}\n{';'.join(signed)}\n{hashlib.sha256(body).hexdigest()}"
        string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
        expected = hmac.new(self.secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields.get("Signature", "")):
            return "SignatureDoesNotMatch", 400, "Specified signature is not matched with our calculation."
        return None

    def _check_v1(self, method: str, query: dict[str, str]) -> tuple[str, int, str] | None:
        if query.get("AccessKeyId") != self.access_key_id:
            return "InvalidAccessKeyId.NotFound", 404, "Specified access key is not found."
        if query.get("SignatureMethod") != "HMAC-SHA1" or query.get("SignatureVersion") != "1.0":
            return "InvalidSignatureMethod", 400, "Specified signature method is not valid."
        if query.get("Action") not in ACTIONS or query.get("Version") != "2017-05-25":
            return "InvalidAction.NotFound", 404, "Specified api is not found, please check your url and method."
        problem = self._fresh(query.get("Timestamp", ""), query.get("SignatureNonce", ""))
        if problem:
            return problem
        signed = {k: v for k, v in query.items() if k != "Signature"}
        string_to_sign = f"{method}&{encode('/')}&{encode(canonical(signed))}"
        expected = base64.b64encode(hmac.new((self.secret + "&").encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(expected, query.get("Signature", "")):
            return "SignatureDoesNotMatch", 400, f"Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
        return None

    def _fresh(self, stamp: str, nonce: str) -> tuple[str, int, str] | None:
        try:
            at = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return "InvalidTimeStamp.Format", 400, "Specified time stamp or date value is not well formatted."
        if abs((datetime.now(timezone.utc) - at).total_seconds()) > 900:
            return "InvalidTimeStamp.Expired", 400, "Specified time stamp or date value is expired."
        with self._lock:
            if not nonce or nonce in self._nonces:
                return "SignatureNonceUsed", 400, "Specified signature nonce was used already."
            self._nonces.add(nonce)
        return None

    def _send_sms(self, params: dict[str, str], kind: str) -> web.Response:
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return self._answer(f"Missing{name}", 400, f"{name} is mandatory for this action.")
        numbers = params["PhoneNumbers"].split(",")
        sign, template = params["SignName"], params["TemplateCode"]
        if len(numbers) > 1000:
            return self._answer("isv.PARAM_LENGTH_LIMIT", 200, "参数超出长度限制")
        if not all(MAINLAND.fullmatch(n) for n in numbers):
            return self._answer("isv.MOBILE_NUMBER_ILLEGAL", 200, "非法手机号")
        if self.signs is not None and self.signs.get(sign) != 1:
            return self._answer("isv.SMS_SIGNATURE_ILLEGAL", 200, "该账号下找不到对应签名")
        if self.templates is not None and (template not in self.templates or self.templates[template].status != 1):
            return self._answer("isv.SMS_TEMPLATE_ILLEGAL", 200, "该账号下找不到对应模板")
        try:
            values = json.loads(params.get("TemplateParam") or "{}")
        except ValueError:
            return self._answer("isv.INVALID_JSON_PARAM", 200, "JSON参数不合法，只接受字符串值")
        if not isinstance(values, dict):
            return self._answer("isv.INVALID_JSON_PARAM", 200, "JSON参数不合法，只接受字符串值")
        if self.templates is not None and self.templates[template].params - set(values):
            return self._answer("isv.TEMPLATE_MISSING_PARAMETERS", 200, "模板缺少变量")
        day = datetime.now(BEIJING).strftime("%Y-%m-%d")
        with self._lock:
            wanted = Counter((day, n, sign, template) for n in numbers)
            if any(self.counts[k] + n > self.daily_limit for k, n in wanted.items()):
                over = True
            else:
                over = False
                self.counts.update(wanted)
                biz_id = f"{next(self._ids):012d}^0"
                self.accepted += [Accepted(n, sign, template, values, params.get("OutId"), biz_id, kind) for n in numbers]
        if over:
            return self._answer("isv.BUSINESS_LIMIT_CONTROL", 200, f"触发号码天级流控Permits:{self.daily_limit}")
        if self.report_to:
            task = asyncio.get_running_loop().create_task(self._push(biz_id, numbers, params.get("OutId") or ""))
            self._pushing.add(task)
            task.add_done_callback(self._pushing.discard)
        return self._answer("OK", 200, "OK", BizId=biz_id)

    def receipt(self, biz_id: str, phone: str, out_id: str = "") -> dict[str, Any]:
        """The receipt Aliyun pushes for one number of one call."""
        now = datetime.now(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
        code, message = self.undeliverable.get(phone, ("DELIVERED", "用户接收成功"))
        return {"phone_number": phone, "send_time": now, "report_time": now, "success": phone not in self.undeliverable,
                "err_code": code, "err_msg": message, "sms_size": "1", "biz_id": biz_id, "out_id": out_id}

    async def _push(self, biz_id: str, numbers: list[str], out_id: str) -> None:
        import aiohttp

        assert self.report_to is not None
        body = [self.receipt(biz_id, n, out_id) for n in numbers]
        async with aiohttp.ClientSession() as session:
            for _try in range(self.report_tries):
                await asyncio.sleep(self.report_delay)
                try:
                    async with session.post(self.report_to, json=body) as r:
                        answer: Any = await r.json(content_type=None)
                        status = r.status
                except (aiohttp.ClientError, ValueError) as e:
                    status, answer = 0, str(e)
                with self._lock:
                    self.pushes.append((status, answer))
                if status == 200 and isinstance(answer, dict) and answer.get("code") == 0:
                    return

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/", self.handle)


V1_COMMON = {"AccessKeyId", "Action", "Format", "RegionId", "SignatureMethod", "SignatureNonce", "SignatureVersion", "Timestamp",
             "Version", "Signature"}


def application(fake: FakeAliyunSms) -> web.Application:
    """The fake's app; a request line may be long, as 1,000 numbers in the query of one call make it (Aliyun takes them)."""
    app = web.Application(handler_args={"max_line_size": 65536, "max_field_size": 65536})
    fake.routes(app)
    return app


class RunningAliyunSms:
    """The fake on its own thread and event loop, for a `with` block."""

    def __init__(self, fake: FakeAliyunSms | None = None) -> None:
        self.fake = fake or FakeAliyunSms()
        # a request line may be long: 1,000 numbers in the query of one call (Aliyun takes them)
        self.app = RunningApp(self.fake.routes, handler_args={"max_line_size": 65536, "max_field_size": 65536})

    def __enter__(self) -> FakeAliyunSms:
        self.fake.base = self.app.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.app.stop()


def main() -> None:
    """Serve a fake on a free port in this process; print the port, then `requests accepted` lines on GET /stats."""
    parser = argparse.ArgumentParser(description="a fake Aliyun SMS API on loopback")
    parser.add_argument("--daily-limit", type=int, default=50)
    args = parser.parse_args()
    fake = FakeAliyunSms(daily_limit=args.daily_limit)

    async def stats(_request: web.Request) -> web.Response:
        with fake._lock:
            return web.json_response({"requests": sum(fake.requests.values()), "accepted": len(fake.accepted),
                                      "answers": dict(fake.answers)})

    async def reset(_request: web.Request) -> web.Response:
        with fake._lock:
            fake.requests.clear()
            fake.answers.clear()
            fake.accepted.clear()
            fake.counts.clear()
        return web.json_response({})

    async def serve() -> None:
        app = application(fake)
        app.router.add_get("/stats", stats)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        print(sock.getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
