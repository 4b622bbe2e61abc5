"""What a request gets while Redis cannot be reached: 503 and when to try again, never a 500.

Scans, joins, ingestion and the board all go through Redis. A feed or a platform's push gets JSON
it can act on (`Retry-After`; items it sends again count once, as always); a person who scanned a
poster gets a page in Chinese asking them to scan again in a moment; a board's websocket is closed with
1013 (try again later) and the page reconnects by itself. The store is not touched.
"""

from __future__ import annotations

import logging

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from web.pages import page

log = logging.getLogger("web")
RETRY_AFTER = "5"
MACHINE = ("/api/", "/ingest/", "/inbound/", "/wecom/", "/metrics")  # callers that read JSON


async def redis_unreachable(request: HTTPConnection, exc: Exception) -> Response | None:
    log.warning("%s: Redis cannot be reached: %s: %s", request.url.path, type(exc).__name__, exc)
    if isinstance(request, WebSocket):  # a board: closed as "try again later"; the page reconnects by itself
        await request.close(code=1013, reason="Redis cannot be reached; try again")
        return None
    assert isinstance(request, Request)
    headers = {"Retry-After": RETRY_AFTER}
    if request.url.path.startswith(MACHINE):
        return JSONResponse({"error": "Redis cannot be reached for a moment; nothing of this request was lost: send it again "
                                      f"in {RETRY_AFTER} s (items already taken count once)"}, status_code=503, headers=headers)
    answer = page(request, "gone.html", {"title": "系统繁忙", "message": "请过几秒钟再扫一次码，或刷新本页。",
                                         "detail": "Redis 暂时连不上（运维请查看 Redis）"}, status_code=503)
    answer.headers["Retry-After"] = RETRY_AFTER
    return answer
