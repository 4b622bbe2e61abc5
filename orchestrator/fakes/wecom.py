"""A fake WeCom on loopback that speaks the server API's wire format (../shared/PLATFORMS.md):
`gettoken`, the group join way calls and `groupchat/get`, the mass-message task calls
(`add_msg_template`, `get_groupmsg_task`, `get_groupmsg_send_result`, `remind_groupmsg_send` at most
3 a day, `cancel_groupmsg_send`), errors as HTTP 200 with an errcode, and callbacks to our URL
encrypted and signed exactly as WeCom does.

Tests steer it: `expire_tokens()` makes every issued token answer 42001, `fail_next` queues
errcodes per path, `join()` puts a customer into a chat and returns the callback WeCom would send,
`tag()` a guide tagging a customer (the callback, and the tags `externalcontact/get` tells), `confirm()` is a guide confirming a task (with per-customer and per-group monthly quota and deleted
friends); `add_chat(chat, owner)` makes a customer group owned by `owner`.
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
from orchestrator.fakes.serving import RunningApp

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
    friends: dict[str, set[str]] | None = None  # sender -> their customers; None: everyone is everyone's
    tags: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # customer -> staff userid -> tag names they gave
    chat_owners: dict[str, str] = field(default_factory=dict)  # chat id -> its owner's userid (default zhangsan)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # msgid -> the mass-message task
    received: Counter[str] = field(default_factory=Counter)  # customer or group -> mass messages delivered this month
    quota: int = 31  # mass messages a customer may receive a month; past it a recipient's status is 3
    reminds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # msgid -> when reminded
    confirm_after: float | None = None  # seconds after which a guide confirms each new task by itself (rehearsals); None: the test does
    robot_key: str = "robot-key-for-tests"
    robot_messages: list[dict[str, Any]] = field(default_factory=list)  # what the group robot posted, with when
    base: str = ""
    _tokens: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def api(self) -> str:
        return self.base + "/cgi-bin/"

    def env(self) -> dict[str, str]:
        return {"ORCH_WECOM_API": self.api, "ORCH_WECOM_CORP_ID": CORP_ID, "ORCH_WECOM_SECRET": SECRET,
                "ORCH_WECOM_TOKEN": TOKEN, "ORCH_WECOM_AES_KEY": AES_KEY, "ORCH_WECOM_ROBOT_KEY": self.robot_key}

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
        body = json.loads(await request.read() or b"{}") if request.method == "POST" else \
            {k: v for k, v in request.query.items() if k != "access_token"}
        self.bodies[path].append(body)
        handler = {"externalcontact/groupchat/add_join_way": self._add_join_way,
                   "externalcontact/groupchat/get_join_way": self._get_join_way,
                   "externalcontact/groupchat/update_join_way": self._update_join_way,
                   "externalcontact/groupchat/get": self._group_chat,
                   "externalcontact/get": self._contact,
                   "externalcontact/add_msg_template": self._add_msg_template,
                   "externalcontact/get_groupmsg_task": self._groupmsg_task,
                   "externalcontact/get_groupmsg_send_result": self._groupmsg_send_result,
                   "externalcontact/remind_groupmsg_send": self._remind,
                   "externalcontact/cancel_groupmsg_send": self._cancel}.get(path)
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
        return {"errcode": 0, "errmsg": "ok", "group_chat": {"chat_id": chat_id, "name": "客户群", "owner": self.owner(chat_id),
                                                            "member_list": self.chats[chat_id], "member_version": "v1"}}

    def _contact(self, body: dict[str, Any]) -> dict[str, Any]:
        customer = body.get("external_userid", "")
        if not customer:
            return {"errcode": 41001, "errmsg": "missing external_userid"}
        return {"errcode": 0, "errmsg": "ok", "external_contact": {"external_userid": customer, "name": "客户", "type": 1},
                "follow_user": [{"userid": userid, "remark": "", "createtime": int(time.time()),
                                 "tags": [{"group_name": "营销", "tag_name": name, "tag_id": f"et{abs(hash(name)) % 10**8}", "type": 1}
                                          for name in sorted(names)]}
                                for userid, names in sorted(self.tags.get(customer, {}).items())]}

    # --- mass messages: tasks a guide confirms ----------------------------------------------------

    def owner(self, chat_id: str) -> str:
        return self.chat_owners.get(chat_id, "zhangsan")

    def _add_msg_template(self, body: dict[str, Any]) -> dict[str, Any]:
        sender, text, kind = body.get("sender", ""), body.get("text", {}).get("content", ""), body.get("chat_type", "single")
        if kind not in ("single", "group") or not text or len(text.encode()) > 4000:
            return {"errcode": 40058, "errmsg": "invalid parameter"}
        if kind == "group":  # into the sender's customer groups: those listed, or all of them
            if not sender:
                return {"errcode": 40058, "errmsg": "invalid parameter: a group message needs its sender"}
            chats = body.get("chat_id_list") or [c for c in self.chats if self.owner(c) == sender]
            fail = [c for c in chats if c not in self.chats or self.owner(c) != sender]
            recipients = [c for c in chats if c not in fail]
        else:
            customers = body.get("external_userid", [])
            if not sender or not customers or len(customers) > 10_000:
                return {"errcode": 40058, "errmsg": "invalid parameter"}
            fail = [c for c in customers if self.friends is not None and c not in self.friends.get(sender, set())]
            recipients = [c for c in customers if c not in fail]
        msgid = f"msg{next(self._ids):05d}"
        self.tasks[msgid] = {"sender": sender, "chat_type": kind, "customers": recipients, "text": text, "confirmed": False,
                             "cancelled": False, "results": {}}
        if self.confirm_after is not None:
            timer = threading.Timer(self.confirm_after, self.confirm, args=(msgid,))
            timer.daemon = True
            timer.start()
        return {"errcode": 0, "errmsg": "ok", "fail_list": fail, "msgid": msgid}

    def _task(self, body: dict[str, Any]) -> dict[str, Any] | None:
        return self.tasks.get(body.get("msgid", ""))

    def _groupmsg_task(self, body: dict[str, Any]) -> dict[str, Any]:
        task = self._task(body)
        if task is None:
            return {"errcode": 41063, "errmsg": "invalid msgid"}
        return {"errcode": 0, "errmsg": "ok", "next_cursor": "",
                "task_list": [{"userid": task["sender"], "status": 2 if task["confirmed"] else 0, "send_time": int(time.time())}]}

    def _groupmsg_send_result(self, body: dict[str, Any]) -> dict[str, Any]:
        task = self._task(body)
        if task is None:
            return {"errcode": 41063, "errmsg": "invalid msgid"}
        recipient = "chat_id" if task["chat_type"] == "group" else "external_userid"
        return {"errcode": 0, "errmsg": "ok", "next_cursor": "", "send_list": [
            {recipient: c, "userid": task["sender"], "status": task["results"].get(c, 0), "send_time": int(time.time())}
            for c in task["customers"] if body.get("userid") == task["sender"]]}

    def _remind(self, body: dict[str, Any]) -> dict[str, Any]:
        task = self._task(body)
        if task is None:
            return {"errcode": 41063, "errmsg": "invalid msgid"}
        day = [t for t in self.reminds[body["msgid"]] if t > time.time() - 86400]
        if len(day) >= 3:
            return {"errcode": 41067, "errmsg": "remind limit: 3 a day per task"}
        self.reminds[body["msgid"]].append(time.time())
        return {"errcode": 0, "errmsg": "ok"}

    def _cancel(self, body: dict[str, Any]) -> dict[str, Any]:
        task = self._task(body)
        if task is None:
            return {"errcode": 41063, "errmsg": "invalid msgid"}
        task["cancelled"] = True
        return {"errcode": 0, "errmsg": "ok"}

    def confirm(self, msgid: str, *, gone: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """The guide taps send in the app: each customer (or group) gets it (1), unless they deleted the guide or the group
        is gone (2) or had their quota (3)."""
        with self._lock:
            task = self.tasks[msgid]
            if task["cancelled"]:
                return
            task["confirmed"] = True
            for c in task["customers"]:
                if c in gone:
                    task["results"][c] = 2
                elif self.received[c] >= self.quota:
                    task["results"][c] = 3
                else:
                    self.received[c] += 1
                    task["results"][c] = 1

    async def robot(self, request: web.Request) -> web.Response:
        """The group robot: a key, 20 messages a minute (then 45009), text of at most 2,048 bytes."""
        if request.query.get("key") != self.robot_key:
            return web.json_response({"errcode": 93000, "errmsg": "invalid webhook url"})
        body = json.loads(await request.read() or b"{}")
        now = time.time()
        with self._lock:
            if len([m for m in self.robot_messages if m["at"] > now - 60]) >= 20:
                return web.json_response({"errcode": 45009, "errmsg": "api freq out of limit"})
            content = body.get("text", {}).get("content", "")
            if body.get("msgtype") != "text" or not content or len(content.encode()) > 2048:
                return web.json_response({"errcode": 40058, "errmsg": "invalid parameter"})
            self.robot_messages.append({"at": now, "text": content})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/cgi-bin/webhook/send", self.robot)
        app.router.add_get("/cgi-bin/gettoken", self.gettoken)
        app.router.add_route("*", "/cgi-bin/{path:.+}", self.api_call)

    # --- people joining, and the callbacks WeCom sends --------------------------------------------

    def add_chat(self, chat_id: str, owner: str | None = None) -> None:
        if owner is not None:
            self.chat_owners[chat_id] = owner
        self.chats.setdefault(chat_id, [{"userid": self.owner(chat_id), "type": 1, "join_time": int(time.time()), "join_scene": 1}])

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

    def tag(self, customer: str, tag_name: str, userid: str = "lili") -> str:
        """Staff `userid` tags `customer` in the app; the decrypted callback message WeCom sends."""
        self.tags.setdefault(customer, {}).setdefault(userid, set()).add(tag_name)
        return (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
                f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
                f"<Event><![CDATA[change_external_contact]]></Event><ChangeType><![CDATA[edit_external_contact]]></ChangeType>"
                f"<UserID><![CDATA[{userid}]]></UserID><ExternalUserID><![CDATA[{customer}]]></ExternalUserID></xml>")

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
    def __init__(self, fake: FakeWeCom | None = None) -> None:
        self.fake = fake or FakeWeCom()
        self.app = RunningApp(self.fake.routes)

    def __enter__(self) -> FakeWeCom:
        self.fake.base = self.app.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.app.stop()
