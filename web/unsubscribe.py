"""One-click unsubscribe from e-mail: `GET /u/<token>` a confirmation page, `POST /u/<token>` records the opt-out.

The token (signed by the e-mail channel, `orchestrator.unsubscribe`) names the member, the address
and the channel; it is the only credential, so the POST needs no cookie or CSRF token. That is
what RFC 8058 asks: a mail provider's "unsubscribe" button POSTs `List-Unsubscribe=One-Click` to
the List-Unsubscribe URL, and a 200 tells it the job is done. A GET never unsubscribes (link
scanners and previews follow links). Recording is idempotent: the same link twice records once.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from orchestrator import optouts, unsubscribe
from web.pages import page

SOURCE = "email-link"
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


def masked(address: str) -> str:
    """`ab***@example.com`: enough for its owner to recognise, not the whole address on a screen."""
    local, at, domain = address.partition("@")
    return f"{local[:2]}***{at}{domain}" if at else address[:2] + "***"


async def unsubscribe_link(request: Request) -> Response:
    secret = request.app.state.settings.link_secret
    if not secret:
        return page(request, "gone.html", {"title": "暂时无法退订", "message": "退订服务还没有配置好，请稍后再试，或直接回复邮件说明退订。",
                                                 "detail": "ORCH_LINK_SECRET is not set on this server"}, status_code=503)
    found = unsubscribe.read_token(secret, request.path_params["token"])
    if found is None or found[2] not in optouts.CHANNELS:
        return page(request, "gone.html", {"title": "退订链接无效", "message": "这个链接不完整或被改动过。请从邮件里重新点击退订链接。",
                                                 "detail": ""}, status_code=404)
    member_id, address, channel = found
    shown = {"address": masked(address), "action": request.url.path}
    if request.method != "POST":
        response = page(request, "unsubscribe.html", {"title": "退订直播提醒邮件", "done": False, **shown})
    else:  # a person's button, or a mail provider's one-click POST (body `List-Unsubscribe=One-Click`): same effect
        said = [optouts.Said(member_id[:64], address.strip().lower()[:255], channel)]
        await asyncio.to_thread(optouts.record, request.app.state.engine, said, SOURCE)
        response = page(request, "unsubscribe.html", {"title": "已退订", "done": True, **shown})
    response.headers.update(HEADERS)
    return response
