"""The 公示 notice of an event, public: `GET /notice/<event>` (a page) and `/notice/<event>.txt`."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from orchestrator.draws import DrawError
from orchestrator.errors import UnknownEvent
from orchestrator.scheduling import notice_of
from web.pages import page


async def notice(request: Request) -> Response:
    name = request.path_params["event"]
    as_text = name.endswith(".txt")
    event_id = name[:-4] if as_text else name
    try:
        text = await asyncio.to_thread(notice_of, request.app.state.engine, event_id)
    except (UnknownEvent, DrawError):
        return page(request, "gone.html", {"title": "没有这个活动的公示", "message": "活动编号不对，或者这个活动没有抽奖。", "detail": ""},
                    status_code=404)
    if as_text:
        return PlainTextResponse(text, headers={"Cache-Control": "public, max-age=300"})
    title = text.splitlines()[0].replace("【活动公示】", "")
    return page(request, "notice.html", {"title": title, "text": text, "text_url": f"/notice/{event_id}.txt"})
