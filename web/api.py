"""The web API: `POST /api/events/<event>/joins` (joins on platforms without callbacks) and
`POST /api/events/<event>/groups` (a group code added to a running event's pool).

Authenticated with `Authorization: Bearer <ORCH_API_TOKEN>`. The body is one join or
`{"joins": [...]}`; each join is `{"person": "<member or platform user id>", "group": <number>,
"guide": "<guide id>"}` (group and guide optional). The whole batch is checked first: one bad
item is a 422 naming it, and nothing is stored. A person already known is counted once.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from orchestrator import joins, optouts, welcome
from orchestrator.errors import UnknownEvent
from orchestrator.ingest import BadInput
from orchestrator.pool import groups_of
from orchestrator.scheduling import get_event

MAX_BATCH = 1000


def _error(status: int, message: str, at: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, **({"at": at} if at else {})}, status_code=status)


def _authorised(request: Request) -> JSONResponse | None:
    token = request.app.state.settings.api_token
    if not token:
        return _error(503, "the API is off: set ORCH_API_TOKEN on the web processes")
    given = request.headers.get("authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
        return _error(401, "missing or wrong bearer token")
    return None


def _parse(body: Any, groups: set[int]) -> tuple[list[joins.Joined], JSONResponse | None]:
    items = body.get("joins") if isinstance(body, dict) and "joins" in body else [body]
    if not isinstance(items, list) or not items:
        return [], _error(422, "expected a join object or {\"joins\": [...]} with at least one")
    if len(items) > MAX_BATCH:
        return [], _error(422, f"at most {MAX_BATCH} joins per request, got {len(items)}")
    out = []
    for i, item in enumerate(items):
        at = f"joins[{i}]" if len(items) > 1 or (isinstance(body, dict) and "joins" in body) else "body"
        if not isinstance(item, dict):
            return [], _error(422, "a join is an object with 'person'", at)
        unknown = set(item) - {"person", "group", "guide"}
        if unknown:
            return [], _error(422, f"unknown field {sorted(unknown)[0]!r}; a join has person, group, guide", at)
        person, group, guide = item.get("person"), item.get("group"), item.get("guide")
        if not isinstance(person, str) or not person.strip() or len(person) > 64:
            return [], _error(422, "'person' must be a non-empty string of at most 64 characters", f"{at}.person")
        if group is not None and (not isinstance(group, int) or isinstance(group, bool) or group not in groups):
            known = ", ".join(str(g) for g in sorted(groups)) or "none yet"
            return [], _error(422, f"group {group!r} is not in the event's pool (groups: {known})", f"{at}.group")
        if guide is not None and (not isinstance(guide, str) or len(guide) > 64):
            return [], _error(422, "'guide' must be a guide id (a string)", f"{at}.guide")
        out.append(joins.Joined(person.strip(), group, guide))
    return out, None


async def post_joins(request: Request) -> JSONResponse:
    denied = _authorised(request)
    if denied is not None:
        return denied
    engine = request.app.state.engine
    event_id = request.path_params["event"]
    try:
        ev = await asyncio.to_thread(get_event, engine, event_id)
    except UnknownEvent as e:
        return _error(404, str(e))
    if ev.state == "cancelled":
        return _error(409, f"event {event_id} is cancelled")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON")
    groups = {g.number for g in await asyncio.to_thread(groups_of, engine, event_id)}
    items, problem = _parse(body, groups)
    if problem is not None:
        return problem
    new, known = await asyncio.to_thread(joins.record, engine, event_id, items, "api")
    await asyncio.to_thread(welcome.plan_for, engine, request.app.state.settings, event_id, new, "api")  # before the count: never lost to Redis
    await joins.count_on_board(request.app.state.redis, event_id, new)
    return JSONResponse({"recorded": len(new), "already": known})



MAX_QR_BYTES = 2_000_000


async def post_optouts(request: Request) -> JSONResponse:
    """`{"optouts": [{"member": id | "address": phone or e-mail, "channel": "*" | sms | ...}]}` (or one object):
    global across events, in effect before the next send."""
    denied = _authorised(request)
    if denied is not None:
        return denied
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON")
    items = body.get("optouts") if isinstance(body, dict) and "optouts" in body else [body]
    if not isinstance(items, list) or not items:
        return _error(422, "expected an opt-out object or {\"optouts\": [...]} with at least one")
    if len(items) > MAX_BATCH:
        return _error(422, f"at most {MAX_BATCH} opt-outs per request, got {len(items)}")
    try:
        said = optouts.parse(items)
    except BadInput as e:
        return _error(422, str(e), e.at)
    recorded, already = await asyncio.to_thread(optouts.record, request.app.state.engine, said, "api")
    return JSONResponse({"recorded": recorded, "already": already})


async def post_group(request: Request) -> JSONResponse:
    """`POST /api/events/<event>/groups?expires=...[&name=&capacity=&margin=]`, the body the group's
    QR picture (PNG or JPEG): appended to the event's pool, which scans reach when the groups
    before it are full. 201 with its number; 422 naming what is wrong, and nothing is stored."""
    from zoneinfo import ZoneInfo

    from orchestrator.errors import EventConflict
    from orchestrator.plan import localize
    from orchestrator.groups import add_to_event
    from orchestrator.pool import BadGroup
    from orchestrator.timespec import parse_moment

    denied = _authorised(request)
    if denied is not None:
        return denied
    state = request.app.state
    event_id = request.path_params["event"]
    try:
        ev = await asyncio.to_thread(get_event, state.engine, event_id)
    except UnknownEvent as e:
        return _error(404, str(e))
    q = request.query_params
    unknown = set(q) - {"expires", "name", "capacity", "margin", "wecom_chat"}
    if unknown:
        return _error(422, f"unknown parameter {sorted(unknown)[0]!r}; use expires, name, capacity, margin (or wecom_chat)", "query")
    if "wecom_chat" in q:
        return await _wecom_chat(request, ev, q["wecom_chat"])
    moment = parse_moment(q.get("expires", ""))
    if moment is None:
        return _error(422, "'expires' must be when the code stops working, e.g. 2026-12-12T19:00 (event timezone) or with an offset",
                      "query.expires")
    numbers: dict[str, int] = {}
    for key in ("capacity", "margin"):
        if key in q:
            if not q[key].isdigit() or int(q[key]) < 1:
                return _error(422, f"'{key}' must be a whole number of at least 1", f"query.{key}")
            numbers[key] = int(q[key])
    body = await request.body()
    if not body:
        return _error(422, "the body must be the group's QR picture (PNG or JPEG)", "body")
    if len(body) > MAX_QR_BYTES:
        return _error(413, f"the picture has {len(body):,} bytes; a group QR needs far fewer (at most {MAX_QR_BYTES:,})", "body")
    expires_at = localize(moment, ZoneInfo(ev.timezone)) if moment.tzinfo is None else moment
    try:
        number = await asyncio.to_thread(add_to_event, state.engine, event_id, body, expires_at, name=q.get("name") or None,
                                         where="the uploaded picture", **numbers)
    except BadGroup as e:
        return _error(422, str(e), "body" if "picture" in str(e) else "query")
    except EventConflict as e:
        return _error(409, str(e))
    await state.pool.refresh(event_id)
    return JSONResponse({"number": number}, status_code=201)


async def _wecom_chat(request: Request, ev: Any, chat_id: str) -> JSONResponse:
    """`?wecom_chat=<chat id>`: a WeCom customer group made in the app, put behind the event's join ways."""
    from orchestrator.pool import BadGroup
    from orchestrator.scheduling import loaded_event
    from orchestrator.wecom import WeComError
    from orchestrator.wecomjoins import add_chat

    state = request.app.state
    wecom = getattr(state, "wecom", None)
    if wecom is None:
        return _error(503, "WeCom is not configured on the web processes (ORCH_WECOM_CORP_ID, ORCH_WECOM_SECRET)")
    if ev.state in ("cancelled", "closed"):
        return _error(409, f"event {ev.id} is {ev.state}: its pool takes no more groups")
    if not chat_id.strip() or len(chat_id) > 64:
        return _error(422, "'wecom_chat' must be a WeCom group chat id", "query.wecom_chat")
    loaded = await asyncio.to_thread(loaded_event, state.engine, ev, members=False)
    try:
        updated = await add_chat(wecom, state.engine, ev.id, loaded, chat_id)
    except BadGroup as e:
        return _error(422, str(e), "query.wecom_chat")
    except WeComError as e:
        return _error(502, str(e))
    return JSONResponse({"join_ways_updated": updated})
