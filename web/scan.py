"""The scan route: a poster's QR leads here, the scan is counted, the pool picks a group.

`GET /s/<code>` answers with the join page (the event, its time and the current group's QR); a
person is recognised on their next scan by a first-party cookie holding a random id, so they are
counted once and sent to the same group. `GET /g/<event>/<number>` serves a group's QR image.
"""

from __future__ import annotations

import asyncio
import secrets

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from orchestrator.pool import group_qr
from orchestrator.scans import scan_tally
from web.pages import page

VISITOR_COOKIE = "ov"
YEAR = 365 * 24 * 3600
NO_STORE = {"Cache-Control": "no-store"}


def _visitor(request: Request) -> tuple[str, bool]:
    """The scanner's random id and whether it is new (a cookie is then set)."""
    value = request.cookies.get(VISITOR_COOKIE, "")
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value, False
    return secrets.token_hex(16), True


async def scan(request: Request) -> Response:
    state = request.app.state
    code = request.path_params["code"]
    known, scanned = state.resolve.cached(code)
    if not known:
        scanned = await asyncio.to_thread(state.resolve, code)
    if scanned is None:
        return page(request, "gone.html", {"title": "二维码无效", "message": "这个二维码不属于任何活动，请向导购索取新的海报。",
                                                 "detail": f"code {code}"}, status_code=404)
    if scanned.event_state in ("cancelled", "closed"):
        message = "这场活动已取消。" if scanned.event_state == "cancelled" else "这场活动已经结束，感谢关注！"
        return page(request, "gone.html", {"title": scanned.title, "message": message, "detail": ""}, status_code=410)
    visitor, new = _visitor(request)
    tally = scan_tally(scanned, visitor)
    if scanned.join_way_qr:  # WeCom: the guide's join way routes to a group with room itself
        await state.pool.tally(tally)
        html = state.pages.get((code, "join-way", scanned.event_state), "join.html", {"s": scanned, "group": None})
    else:  # counted and placed by one script: one round trip to Redis
        place = await state.pool.assign(scanned.event_id, visitor, tally=tally)
        html = state.pages.get((code, place.group, scanned.event_state), "join.html", {"s": scanned, "group": place.group})
    response = HTMLResponse(html, headers=NO_STORE)
    if new:  # the header written out: http.cookies would cost more than the rest of the answer
        secure = "; Secure" if request.scope.get("scheme") == "https" else ""
        response.raw_headers.append((b"set-cookie", f"{VISITOR_COOKIE}={visitor}; HttpOnly; Max-Age={YEAR}; Path=/; SameSite=lax{secure}".encode()))
    return response


async def group_image(request: Request) -> Response:
    event_id = request.path_params["event"]
    number = request.path_params["number"]
    found = await asyncio.to_thread(group_qr, request.app.state.engine, event_id, number)
    if found is None:
        return Response("no such group code", status_code=404, media_type="text/plain; charset=utf-8")
    data, media_type = found
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})
