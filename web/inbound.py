"""`POST /inbound/sms/<key>`: Aliyun's push of SMS replies; a TD (T, N, R, 退订) opts the number out of SMS.

The key in the path is `ORCH_SMS_INBOUND_KEY` (the push cannot sign). The answer is what Aliyun's
push expects, `{"code": 0, "msg": "成功"}`; anything else makes it push the batch again.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from orchestrator import optouts, smsreplies
from orchestrator.ingest import BadInput

log = logging.getLogger("web.inbound")
MAX_BODY = 1_000_000


async def sms_replies(request: Request) -> JSONResponse:
    key = request.app.state.settings.sms_inbound_key
    if not key:
        return JSONResponse({"code": 503, "msg": "SMS replies are off: set ORCH_SMS_INBOUND_KEY"}, status_code=503)
    if not hmac.compare_digest(request.path_params["key"].encode(), key.encode()):
        return JSONResponse({"code": 404, "msg": "not found"}, status_code=404)
    body = await request.body()
    if len(body) > MAX_BODY:
        return JSONResponse({"code": 413, "msg": f"at most {MAX_BODY:,} bytes"}, status_code=413)
    try:
        replies = smsreplies.read(json.loads(body))
    except ValueError as e:
        return JSONResponse({"code": 400, "msg": f"the body is not JSON: {e}"}, status_code=400)
    except BadInput as e:
        return JSONResponse({"code": 422, "msg": str(e), "at": e.at}, status_code=422)
    recorded, already = await asyncio.to_thread(optouts.record, request.app.state.engine, replies.opt_outs, "sms-reply")
    if recorded or already:
        log.info("SMS replies: %d opt-outs recorded, %d already known, %d other replies", recorded, already, replies.others)
    return JSONResponse({"code": 0, "msg": "成功"})
