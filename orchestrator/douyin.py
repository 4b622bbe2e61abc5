"""Douyin interactive-game comment push (抖音互动玩法 直播间数据推送): its signature and its comments.

The platform POSTs comments with headers `x-nonce-str`, `x-timestamp`, `x-roomid`, `x-msg-type`
and `x-signature` = base64(md5("k=v&..." of the x- headers but the signature, sorted by name,
then the raw body, then the app secret)). Duplicates happen: comments are stored idempotently
on their `msg_id`. The platform wants an answer within 2 s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from orchestrator.ingest import BadInput

SIGNED = ("x-msg-type", "x-nonce-str", "x-roomid", "x-timestamp")


def signature(headers: Mapping[str, str], body: bytes, secret: str) -> str:
    pairs = "&".join(f"{k}={headers.get(k, '')}" for k in sorted(SIGNED))
    return base64.b64encode(hashlib.md5(pairs.encode() + body + secret.encode()).digest()).decode()


def signed(headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    return hmac.compare_digest(signature(headers, body, secret), headers.get("x-signature", ""))


def comments(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The push as a batch for `ingest.comment_rows` (platform douyin, room from x-roomid)."""
    try:
        data = json.loads(body)
    except ValueError as e:
        raise BadInput(f"the body is not JSON: {e}", "body") from e
    items = data if isinstance(data, list) else [data]
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadInput("each comment must be an object", f"[{i}]")
        ts = item.get("timestamp")
        if isinstance(ts, int | float) and not isinstance(ts, bool) and ts < 1e12:
            ts = int(ts * 1000)  # seconds: as milliseconds
        out.append({"platform": "douyin", "room": headers.get("x-roomid", ""), "message_id": item.get("msg_id"),
                     "user_id": item.get("sec_openid"), "name": item.get("nickname") or "", "text": item.get("content", ""), "time": ts})
    return {"comments": out}
