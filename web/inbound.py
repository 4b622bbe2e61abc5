"""Aliyun's pushes: `POST /inbound/sms/<key>`, SMS replies (a TD, T, N, R or 退订 opts the number
out of SMS), and `POST /inbound/sms-report/<key>`, delivery receipts (orchestrator.smsreceipts).

The key in the path is `ORCH_SMS_INBOUND_KEY` (the pushes cannot sign). The answer is what Aliyun's
push expects, `{"code": 0, "msg": "成功"}`; anything else makes it push the batch again.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from orchestrator import optouts, smsreceipts, smsreplies
from orchestrator.ingest import BadInput

log = logging.getLogger("web.inbound")
MAX_BODY = 1_000_000
T = TypeVar("T")


async def _pushed(request: Request) -> Any:
    """The JSON a keyed push carries, or the JSONResponse refusing it."""
    key = request.app.state.settings.sms_inbound_key
    if not key:
        return JSONResponse({"code": 503, "msg": "SMS pushes are off: set ORCH_SMS_INBOUND_KEY"}, status_code=503)
    if not hmac.compare_digest(request.path_params["key"].encode(), key.encode()):
        return JSONResponse({"code": 404, "msg": "not found"}, status_code=404)
    body = await request.body()
    if len(body) > MAX_BODY:
        return JSONResponse({"code": 413, "msg": f"at most {MAX_BODY:,} bytes"}, status_code=413)
    try:
        return json.loads(body)
    except ValueError as e:
        return JSONResponse({"code": 400, "msg": f"the body is not JSON: {e}"}, status_code=400)


async def sms_replies(request: Request) -> JSONResponse:
    async def keep(replies: smsreplies.Replies) -> None:
        recorded, already = await asyncio.to_thread(optouts.record, request.app.state.engine, replies.opt_outs, "sms-reply")
        if recorded or already:
            log.info("SMS replies: %d opt-outs recorded, %d already known, %d other replies", recorded, already, replies.others)
    return await _take(request, smsreplies.read, keep)


async def sms_reports(request: Request) -> JSONResponse:
    async def keep(receipts: list[smsreceipts.Receipt]) -> None:
        kept, known = await asyncio.to_thread(smsreceipts.record, request.app.state.engine, receipts)
        log.info("SMS receipts: %d kept (%d not delivered), %d already known", kept, sum(not r.delivered for r in receipts), known)
    return await _take(request, smsreceipts.read, keep)


async def _take(request: Request, read: Callable[[Any], T], keep: Callable[[T], Awaitable[None]]) -> JSONResponse:
    """Check a keyed push, `read` its JSON (a 422 naming what is wrong and where: nothing kept), `keep` it, answer as Aliyun expects."""
    pushed = await _pushed(request)
    if isinstance(pushed, JSONResponse):
        return pushed
    try:
        parsed = read(pushed)
    except BadInput as e:
        return JSONResponse({"code": 422, "msg": str(e), "at": e.at}, status_code=422)
    await keep(parsed)
    return JSONResponse({"code": 0, "msg": "成功"})
