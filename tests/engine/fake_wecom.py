"""A fake WeCom on loopback that speaks the server API's wire format (../shared/PLATFORMS.md):
`gettoken`, the group join way calls and `groupchat/get`, errors as HTTP 200 with an errcode, and
callbacks to our URL encrypted and signed exactly as WeCom does.

Tests steer it: `expire_tokens()` makes every issued token answer 42001, `fail_next` queues
errcodes per path, `join()` puts a customer into a chat and returns the callback WeCom would send.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.wecom_crypto import WeComCrypto
from tests.engine.receiver import RunningApp

CORP_ID = "ww0123456789abcdef"
SECRET = "app-secret-for-tests"
TOKEN = "callbacktoken"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"  # 43 characters, as WeCom shows one


@dataclass
class FakeWeCom:
    crypto: WeComCrypto = field(default_factory=lambda: WeComCrypto(TOKEN, AES_KEY, CORP_ID))
    calls: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    fail_next: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    join_ways: dict[str, dict[str, Any]] = field(default_factory=dict)
    chats: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    base: str = ""
    _tokens: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api(self) -> str:
        return self.base + "/cgi-bin/"

    def env(self) -> dict[str, str]:
        return {"ORCH_WECOM_API": self.api, "ORCH_WECOM_CORP_ID": CORP_ID, "ORCH_WECOM_SECRET": SECRET,
                "ORCH_WECOM_TOKEN": TOKEN, "ORCH_WECOM_AES_KEY": AES_KEY}

    def expire_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    # --- the API ------------------------------------------------------------------------------

    async def gettoken(self, request: web.Request) -> web.Response:
        self.calls["gettoken"] += 1
        if request.query.get("corpid") != CORP_ID or request.query.get("corpsecret") != SECRET:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential"})
        token = secrets.token_hex(8)
        with self._lock:
            self._tokens.add(token)
        return web.json_response({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200})

    async def api_call(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.calls[path] += 1
        with self._lock:
            known = request.query.get("access_token") in self._tokens
            queued = self.fail_next[path].pop(0) if self.fail_next[path] else None
        if not known:
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        if queued is not None:
            return web.json_response({"errcode": queued, "errmsg": "injected by the test"})
        body = json.loads(await request.read() or b"{}")
        self.bodies[path].append(body)
        handler = {"externalcontact/groupchat/add_join_way": self._add_join_way,
                   "externalcontact/groupchat/get_join_way": self._get_join_way,
                   "externalcontact/groupchat/update_join_way": self._update_join_way,
                   "externalcontact/groupchat/get": self._group_chat}.get(path)
        if handler is None:
            return web.json_response({"errcode": 60011, "errmsg": f"no such api {path}"})
        return web.json_response(handler(body))

    def _add_join_way(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("scene") != 2 or not 1 <= len(body.get("chat_id_list", [])) <= 5 or len(body.get("state", "")) > 30 \
                or len(body.get("room_base_name", "")) > 40 or len(body.get("remark", "")) > 30:
            return {"errcode": 40058, "errmsg": "invalid parameter"}
        config_id = f"cfg{next(self._ids):04d}"
        self.join_ways[config_id] = {**body, "config_id": config_id, "qr_code": f"https://wework.qpic.cn/wwpic/{config_id}/0"}
        return {"errcode": 0, "errmsg": "ok", "config_id": config_id}

    def _get_join_way(self, body: dict[str, Any]) -> dict[str, Any]:
        way = self.join_ways.get(body.get("config_id", ""))
        if way is None:
            return {"errcode": 41044, "errmsg": "invalid config_id"}
        return {"errcode": 0, "errmsg": "ok", "join_way": way}

    def _update_join_way(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("config_id") not in self.join_ways:
            return {"errcode": 41044, "errmsg": "invalid config_id"}
        self.join_ways[body["config_id"]].update(body)
        return {"errcode": 0, "errmsg": "ok"}

    def _group_chat(self, body: dict[str, Any]) -> dict[str, Any]:
        chat_id = body.get("chat_id", "")
        if chat_id not in self.chats:
            return {"errcode": 701008, "errmsg": "not a customer group chat"}
        return {"errcode": 0, "errmsg": "ok", "group_chat": {"chat_id": chat_id, "name": "客户群", "owner": "zhangsan",
                                                            "member_list": self.chats[chat_id], "member_version": "v1"}}

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/cgi-bin/gettoken", self.gettoken)
        app.router.add_route("*", "/cgi-bin/{path:.+}", self.api_call)

    # --- people joining, and the callbacks WeCom sends --------------------------------------------

    def add_chat(self, chat_id: str) -> None:
        self.chats.setdefault(chat_id, [{"userid": "zhangsan", "type": 1, "join_time": int(time.time()), "join_scene": 1}])

    def join(self, chat_id: str, userid: str, state: str, *, items: bool = True) -> str:
        """`userid` scans a join way with `state` into `chat_id`; the decrypted callback message."""
        self.add_chat(chat_id)
        now = int(time.time())
        self.chats[chat_id].append({"userid": userid, "type": 2, "join_time": now, "join_scene": 3, "state": state, "unionid": "u" + userid})
        members = f"<Item><![CDATA[{userid}]]></Item>" if items else f"<![CDATA[{userid}]]>"
        return (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
                f"<CreateTime>{now}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_external_chat]]></Event>"
                f"<ChatId><![CDATA[{chat_id}]]></ChatId><ChangeType><![CDATA[update]]></ChangeType>"
                f"<UpdateDetail><![CDATA[add_member]]></UpdateDetail><JoinScene>3</JoinScene><QuitScene>0</QuitScene>"
                f"<MemChangeCnt>1</MemChangeCnt><MemChangeList>{members}</MemChangeList><LastMemVer><![CDATA[v1]]></LastMemVer>"
                f"<CurMemVer><![CDATA[v2]]></CurMemVer></xml>")

    def sealed(self, message: str, *, timestamp: int | None = None, nonce: str | None = None) -> tuple[bytes, dict[str, str]]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        nonce = nonce or secrets.token_hex(5)
        body, signature = self.crypto.seal(message, ts, nonce)
        return body, {"msg_signature": signature, "timestamp": ts, "nonce": nonce}

    @staticmethod
    def post(url: str, body: bytes, params: dict[str, str], bearer: str | None = None) -> tuple[int, str]:
        """POST a callback like WeCom does (or, with `bearer`, call our API); (status, answer)."""
        headers = {"Content-Type": "text/xml"} | ({"Authorization": f"Bearer {bearer}"} if bearer else {})
        query = ("&" if "?" in url else "?") + urllib.parse.urlencode(params) if params else ""
        req = urllib.request.Request(url + query, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


class RunningWeCom:
    def __init__(self) -> None:
        self.fake = FakeWeCom()
        self.app = RunningApp(self.fake.routes)

    def __enter__(self) -> FakeWeCom:
        self.fake.base = self.app.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.app.stop()
