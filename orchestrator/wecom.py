"""A thin client of the WeCom server API (企业微信服务端 API), per ../docs/operations.md "WeCom".

Errors come as HTTP 200 with `errcode`: we branch on it, never on `errmsg`. The access token is
cached in Redis (shared by every process, kept until shortly before WeCom's `expires_in`); an
answer saying it is invalid or expired (40014, 42001, 40001) refetches it once and retries.
`-1` (busy) and 45009 (rate limit) are retried with exponential backoff, at most `tries` times.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis

from orchestrator.errors import OrchestratorError

DEFAULT_API = "https://qyapi.weixin.qq.com/cgi-bin/"
TOKEN_INVALID = {40014, 42001, 40001}
BUSY = -1
RATE_LIMITED = 45009
TOKEN_MARGIN = 300  # seconds before WeCom's expiry that a cached token is dropped


class WeComError(OrchestratorError):
    """WeCom refused a call; `errcode` is WeCom's code."""

    def __init__(self, path: str, errcode: int, errmsg: str) -> None:
        super().__init__(f"WeCom {path} answered errcode {errcode}: {errmsg}")
        self.path, self.errcode, self.errmsg = path, errcode, errmsg


@dataclass(frozen=True, slots=True)
class JoinWay:
    config_id: str
    qr_code: str  # URL of the QR picture
    state: str


class WeComClient:
    def __init__(self, session: aiohttp.ClientSession, redis: Redis, corp_id: str, secret: str, *, base_url: str = DEFAULT_API,
                 tries: int = 3, backoff: float = 1.0, pause: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.session, self.redis = session, redis
        self.corp_id, self.secret = corp_id, secret
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.tries, self.backoff, self.pause = tries, backoff, pause
        self.token_key = f"wecom:token:{corp_id}:{hashlib.sha256(secret.encode()).hexdigest()[:12]}"

    # --- the token ----------------------------------------------------------------------------

    async def token(self) -> str:
        cached = await self.redis.get(self.token_key)
        if cached:
            return cached.decode() if isinstance(cached, bytes) else str(cached)
        answer = await self._http("GET", "gettoken", {"corpid": self.corp_id, "corpsecret": self.secret}, None)
        code = int(answer.get("errcode", 0))
        if code != 0:
            raise WeComError("gettoken", code, str(answer.get("errmsg", "")))
        token = str(answer["access_token"])
        ttl = max(60, int(answer.get("expires_in", 7200)) - TOKEN_MARGIN)
        await self.redis.set(self.token_key, token, ex=ttl)
        return token

    async def forget_token(self) -> None:
        await self.redis.delete(self.token_key)

    # --- calls --------------------------------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any] | None = None, query: dict[str, str] | None = None) -> dict[str, Any]:
        """POST `body` (or GET `query` without one) to `path`; the answer when errcode is 0."""
        refreshed = False
        attempt = 0
        while True:
            token = await self.token()
            answer = await self._http("POST" if body is not None else "GET", path, {**(query or {}), "access_token": token}, body)
            code = int(answer.get("errcode", 0))
            if code == 0:
                return answer
            if code in TOKEN_INVALID and not refreshed:
                refreshed = True
                await self.forget_token()
                continue
            if code in (BUSY, RATE_LIMITED) and attempt + 1 < self.tries:
                await self.pause(self.backoff * 2 ** attempt)
                attempt += 1
                continue
            raise WeComError(path, code, str(answer.get("errmsg", "")))

    async def _http(self, method: str, path: str, params: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                async with self.session.request(method, self.base + path, params=params,
                                                data=None if body is None else json.dumps(body, ensure_ascii=False).encode(),
                                                headers={"Content-Type": "application/json"} if body is not None else None,
                                                timeout=aiohttp.ClientTimeout(total=10)) as r:
                    if r.status >= 500:
                        raise aiohttp.ClientResponseError(r.request_info, (), status=r.status, message=r.reason or "")
                    answer = json.loads(await r.read())
                    if not isinstance(answer, dict):
                        raise WeComError(path, -2, f"not a JSON object: {str(answer)[:100]}")
                    return answer
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
                if attempt + 1 >= self.tries:
                    raise WeComError(path, -2, f"no usable answer after {self.tries} tries: {e}") from e
                await self.pause(self.backoff * 2 ** attempt)
                attempt += 1

    # --- the API we use -------------------------------------------------------------------------

    async def add_join_way(self, *, state: str, room_base_name: str, chat_ids: list[str], remark: str) -> JoinWay:
        """A group live code (scene 2) that creates the next group when the last one is full."""
        answer = await self.call("externalcontact/groupchat/add_join_way", {
            "scene": 2, "remark": remark[:30], "auto_create_room": 1, "room_base_name": room_base_name[:40],
            "room_base_id": 1, "chat_id_list": chat_ids[:5], "state": state[:30]})
        config_id = str(answer["config_id"])
        return JoinWay(config_id, await self.join_way_qr(config_id), state)

    async def join_way_qr(self, config_id: str) -> str:
        return str((await self.get_join_way(config_id))["qr_code"])

    async def get_join_way(self, config_id: str) -> dict[str, Any]:
        answer = await self.call("externalcontact/groupchat/get_join_way", {"config_id": config_id})
        way: dict[str, Any] = answer["join_way"]
        return way

    async def update_join_way(self, config_id: str, *, state: str, room_base_name: str, chat_ids: list[str], remark: str) -> None:
        await self.call("externalcontact/groupchat/update_join_way", {
            "config_id": config_id, "scene": 2, "remark": remark[:30], "auto_create_room": 1, "room_base_name": room_base_name[:40],
            "room_base_id": 1, "chat_id_list": chat_ids[:5], "state": state[:30]})

    async def group_chat(self, chat_id: str) -> dict[str, Any]:
        answer = await self.call("externalcontact/groupchat/get", {"chat_id": chat_id, "need_name": 1})
        chat: dict[str, Any] = answer["group_chat"]
        return chat

    async def contact(self, external_userid: str) -> dict[str, Any]:
        """A customer and each staff member who has them, with the tags that member gave them:
        `{"external_contact": {...}, "follow_user": [{"userid", "tags": [{"group_name", "tag_name", "tag_id", "type"}]}]}`."""
        return await self.call("externalcontact/get", query={"external_userid": external_userid})

    # --- mass messages (群发): tasks a guide confirms in the WeCom app ------------------------------

    async def add_msg_template(self, *, sender: str, external_userids: list[str], text: str) -> tuple[str, list[str]]:
        """Create a 1:1 mass-message task from `sender` (a guide's userid) to their customers; (msgid,
        the customers WeCom refused at once: not the sender's, or unknown)."""
        answer = await self.call("externalcontact/add_msg_template", {
            "chat_type": "single", "external_userid": external_userids[:10_000], "sender": sender, "text": {"content": text}})
        return str(answer["msgid"]), [str(x) for x in answer.get("fail_list", [])]

    async def add_group_msg_template(self, *, sender: str, chat_ids: list[str], text: str) -> tuple[str, list[str]]:
        """Create a mass-message task from `sender` (the groups' owner) into these customer groups of
        theirs; (msgid, the chats WeCom refused at once: not the sender's, or gone)."""
        answer = await self.call("externalcontact/add_msg_template", {
            "chat_type": "group", "sender": sender, "chat_id_list": chat_ids, "text": {"content": text}})
        return str(answer["msgid"]), [str(x) for x in answer.get("fail_list", [])]

    async def groupmsg_task(self, msgid: str) -> list[dict[str, Any]]:
        """Each sender of a task and whether they confirmed it: [{userid, status 0 unsent | 2 sent, send_time}]."""
        return await self._pages("externalcontact/get_groupmsg_task", {"msgid": msgid}, "task_list")

    async def groupmsg_send_result(self, msgid: str, userid: str) -> list[dict[str, Any]]:
        """Per recipient of a sender's task: [{external_userid (or chat_id, for a group task), status 0 unsent | 1 sent |
        2 not a friend (or not a group of theirs) | 3 quota reached}]."""
        return await self._pages("externalcontact/get_groupmsg_send_result", {"msgid": msgid, "userid": userid}, "send_list")

    async def remind_groupmsg_send(self, msgid: str) -> None:
        """Remind the senders who have not confirmed (WeCom allows 3 a day per task)."""
        await self.call("externalcontact/remind_groupmsg_send", {"msgid": msgid})

    async def cancel_groupmsg_send(self, msgid: str) -> None:
        """Stop the part of a task not sent yet."""
        await self.call("externalcontact/cancel_groupmsg_send", {"msgid": msgid})

    async def _pages(self, path: str, body: dict[str, Any], key: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor = ""
        for _page in range(1000):  # 1,000 pages of 1,000: more than any task has
            answer = await self.call(path, {**body, "limit": 1000, **({"cursor": cursor} if cursor else {})})
            out += list(answer.get(key, []))
            cursor = str(answer.get("next_cursor", "") or "")
            if not cursor:
                break
        return out
