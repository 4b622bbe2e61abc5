"""Posters on the web: `GET /p/<code>.png` one poster (its code is on the poster anyway),
`GET /posters/<event>/<key>` the event's page of every poster (the key is printed to staff only)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from orchestrator.poster import index_html
from orchestrator.posters import page_items, poster_png
from web.pages import page


async def poster_image(request: Request) -> Response:
    code = request.path_params["code"]
    png = await asyncio.to_thread(poster_png, request.app.state.engine, code)
    if png is None:
        return Response("no poster for this code (yet): posters are made at the event's poster step",
                        status_code=404, media_type="text/plain; charset=utf-8")
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})


async def poster_page(request: Request) -> Response:
    state = request.app.state
    found = await asyncio.to_thread(page_items, state.engine, request.path_params["event"], request.path_params["key"],
                                    state.settings.public_url)
    if found is None:
        return page(request, "gone.html", {"title": "没有这页海报", "message": "链接不对，或者这场活动的海报还没生成。",
                                                 "detail": ""}, status_code=404)
    title, items = found
    return HTMLResponse(index_html(title, items), headers={"Cache-Control": "private, no-cache"})
