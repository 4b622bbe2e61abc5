"""WeCom's callback URL (`/wecom/callback`): the URL check (GET), group member changes (joins) and
customer changes (an opt-out tag) (POST).

Every request is checked before anything is read from it: its timestamp must be within five
minutes of ours (an older one is a replay), its msg_signature must be ours, and the message must
decrypt with our EncodingAESKey to our corp id. A rejected request gets a 4xx and changes nothing.
WeCom retries a callback it got no answer to; a message seen before (same content) is answered
`success` and counted nowhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from orchestrator import joins, welcome
from orchestrator.wecom import WeComError
from orchestrator.wecom_crypto import CallbackRejected
from orchestrator.wecomjoins import on_member_change
from orchestrator.wecomtags import on_contact_change

log = logging.getLogger("web.wecom")
WINDOW = 300  # seconds a callback's timestamp may differ from our clock
SEEN_FOR = 24 * 3600
ANSWER_WITHIN = 4.0  # WeCom retries after 5 s


def fresh(timestamp: str, now: float | None = None) -> None:
    if not timestamp.isdigit():
        raise CallbackRejected(f"timestamp {timestamp[:20]!r} is not a Unix time", 400)
    skew = abs((time.time() if now is None else now) - int(timestamp))
    if skew > WINDOW:
        raise CallbackRejected(f"timestamp is {skew:.0f} s away from our clock (allowed {WINDOW} s): a replayed or forged callback", 403)


async def callback(request: Request) -> Response:
    state = request.app.state
    crypto = getattr(state, "wecom_crypto", None)
    if crypto is None:
        return PlainTextResponse("WeCom callbacks are not configured (ORCH_WECOM_CORP_ID, ORCH_WECOM_TOKEN, ORCH_WECOM_AES_KEY)", 503)
    q = request.query_params
    signature, timestamp, nonce = q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
    try:
        fresh(timestamp)
        if request.method == "GET":
            return PlainTextResponse(crypto.reply_url_check(signature, timestamp, nonce, q.get("echostr", "")))
        message = crypto.open(signature, timestamp, nonce, await request.body())
    except CallbackRejected as e:
        log.warning("WeCom callback rejected (%s): %s", request.client.host if request.client else "?", e)
        return PlainTextResponse(str(e), status_code=e.status)
    key = "wecom:seen:" + hashlib.sha256(json.dumps(message, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    if await state.redis.exists(key):
        return PlainTextResponse("success")  # a retry of a callback already counted
    wecom = getattr(state, "wecom", None)
    if wecom is None:
        log.error("a WeCom callback arrived but the API is not configured (ORCH_WECOM_SECRET): joins cannot be attributed")
        return PlainTextResponse("success")
    try:
        if message.get("Event") == "change_external_contact":  # a customer's tags changed: an opt-out tag?
            if await asyncio.wait_for(on_contact_change(wecom, state.engine, message, state.settings.wecom_optout_tag), ANSWER_WITHIN):
                log.info("WeCom: customer %s tagged %s: opted out of every channel", message.get("ExternalUserID"), state.settings.wecom_optout_tag)
            await state.redis.set(key, 1, ex=SEEN_FOR)
            return PlainTextResponse("success")
        learned = await asyncio.wait_for(on_member_change(wecom, state.engine, message), ANSWER_WITHIN)
    except (WeComError, asyncio.TimeoutError) as e:
        log.warning("WeCom callback not processed, WeCom will retry: %s", e)
        return PlainTextResponse("not processed; retry", status_code=503)
    for event_id, new in learned.new.items():
        await asyncio.to_thread(welcome.plan_for, state.engine, state.settings, event_id, new, "wecom")  # before the count: never lost to Redis
        await joins.count_on_board(state.redis, event_id, new)
    await state.redis.set(key, 1, ex=SEEN_FOR)
    if learned.recorded or learned.unattributed:
        log.info("WeCom joins: %d new, %d already counted, %d through other codes", learned.recorded, learned.already, learned.unattributed)
    return PlainTextResponse("success")
