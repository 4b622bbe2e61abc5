"""The WeCom group robot (群机器人): staff alerts posted into an internal WeCom group.

`POST <ORCH_WECOM_API>webhook/send?key=<ORCH_WECOM_ROBOT_KEY>` with a text message (at most 2,048
bytes). A robot takes 20 messages a minute; alerts are paced by a token bucket in Redis shared by
every worker (one every 3 s), so a burst of alerts waits instead of being refused with 45009.
"""

from __future__ import annotations

import json

import aiohttp

from orchestrator.limits import RateLimiter
from orchestrator.wecom import WeComError

PER_SECOND = 20 / 60
MAX_BYTES = 2048


def clip(text: str, limit: int = MAX_BYTES) -> str:
    """`text` cut to `limit` UTF-8 bytes on a character boundary."""
    raw = text.encode()
    return text if len(raw) <= limit else raw[:limit - 3].decode(errors="ignore") + "…"


async def post(limiter: RateLimiter, base_url: str, key: str, text: str) -> None:
    """Post `text` through the robot; WeComError when WeCom refuses it (93000: a wrong key)."""
    await limiter.acquire(f"wecom_robot:{key[-6:]}", 1, PER_SECOND, burst=1)
    url = (base_url if base_url.endswith("/") else base_url + "/") + "webhook/send"
    body = json.dumps({"msgtype": "text", "text": {"content": clip(text)}}, ensure_ascii=False).encode()
    async with aiohttp.ClientSession() as session, session.post(url, params={"key": key}, data=body,
                                                                  headers={"Content-Type": "application/json"},
                                                                  timeout=aiohttp.ClientTimeout(total=10)) as r:
        answer = json.loads(await r.read() or b"{}")
    code = int(answer.get("errcode", -2)) if isinstance(answer, dict) else -2
    if code != 0:
        raise WeComError("webhook/send", code, str(answer.get("errmsg", "")) if isinstance(answer, dict) else str(answer)[:100])
