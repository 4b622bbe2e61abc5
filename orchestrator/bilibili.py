"""Bilibili live comments over the open-live websocket (B站直播开放平台 长连).

Every packet is a 16-byte big-endian header (`>IHHII`: packet length, header length 16, version,
operation, sequence) and a body. Operations: 7 auth (the `auth_body` the platform's app-start call
returned) / 8 its reply (`{"code": 0}`); 2 heartbeat, every 30 s / 3 its reply; 5 a message.
Version 0 bodies are JSON; 2 is zlib and 3 brotli, and a compressed body is itself a sequence of
packets. Comments are `LIVE_OPEN_PLATFORM_DM` (`open_id`, `uname`, `msg`, `msg_id`, `timestamp`);
the web room's `DANMU_MSG` is read too (`info[1]` text, `info[2][0]` uid, `info[2][1]` name,
`info[0][4]` ms time), though it masks names after a few minutes: a lottery uses the open platform.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import brotli  # type: ignore[import-untyped]
import websockets

from orchestrator.errors import OrchestratorError

log = logging.getLogger("orchestrator.bilibili")
HEADER = struct.Struct(">IHHII")
HEARTBEAT, HEARTBEAT_REPLY, MESSAGE, AUTH, AUTH_REPLY = 2, 3, 5, 7, 8
JSON_BODY, ZLIB_BODY, BROTLI_BODY = 0, 2, 3


class BilibiliError(OrchestratorError):
    """The platform refused us (auth) or spoke something that is not its protocol."""


def packet(op: int, body: bytes = b"", version: int = 1, seq: int = 1) -> bytes:
    return HEADER.pack(HEADER.size + len(body), HEADER.size, version, op, seq) + body


def packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(operation, body) of every packet in `data`, compressed bodies opened (recursively)."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, header_len, version, op, _seq = HEADER.unpack_from(data, offset)
        if length < header_len or offset + length > len(data):
            raise BilibiliError(f"a packet claims {length} bytes at offset {offset}; {len(data) - offset} are there")
        body = data[offset + header_len:offset + length]
        offset += length
        if op == MESSAGE and version == ZLIB_BODY:
            yield from packets(zlib.decompress(body))
        elif op == MESSAGE and version == BROTLI_BODY:
            yield from packets(brotli.decompress(body))
        else:
            yield op, body


def comment_of(message: dict[str, Any], room: str) -> dict[str, Any] | None:
    """An ingestion comment from a message, or None for anything else (gifts, likes, entries)."""
    cmd = str(message.get("cmd", "")).split(":")[0]
    if cmd == "LIVE_OPEN_PLATFORM_DM":
        d = message.get("data") or {}
        ts = d.get("timestamp")
        return {"platform": "bilibili", "room": str(d.get("room_id") or room), "message_id": d.get("msg_id"), "user_id": d.get("open_id"),
                "name": d.get("uname") or "", "text": d.get("msg", ""), "time": int(ts) * 1000 if isinstance(ts, int) else ts}
    if cmd == "DANMU_MSG":
        info = message.get("info") or []
        try:
            ms, text, uid, name = info[0][4], info[1], info[2][0], info[2][1]
        except (IndexError, TypeError):
            return None
        return {"platform": "bilibili", "room": room, "message_id": f"{uid}:{ms}", "user_id": str(uid), "name": name or "", "text": text,
                "time": ms}
    return None


async def follow(url: str, auth_body: str, room: str, on_comments: Callable[[list[dict[str, Any]]], Awaitable[None]], *,
                 heartbeat: float = 30.0, stop: asyncio.Event | None = None) -> None:
    """Connect, authenticate, keep the heartbeat and hand every batch of comments to `on_comments`
    until `stop` is set or the server closes; BilibiliError when auth is refused."""
    async with websockets.connect(url, max_size=8 * 1024 * 1024) as ws:
        await ws.send(packet(AUTH, auth_body.encode()))
        reply = await asyncio.wait_for(ws.recv(), 10)
        ops = list(packets(reply if isinstance(reply, bytes) else reply.encode()))
        if not ops or ops[0][0] != AUTH_REPLY:
            raise BilibiliError("no auth reply: is this the open-live websocket?")
        code = json.loads(ops[0][1] or b"{}").get("code")
        if code != 0:
            raise BilibiliError(f"auth refused with code {code}: the auth_body is stale or for another app")

        async def beat() -> None:
            while True:
                await ws.send(packet(HEARTBEAT))
                await asyncio.sleep(heartbeat)

        beating = asyncio.create_task(beat())
        stopping = asyncio.create_task(stop.wait()) if stop is not None else None
        try:
            while True:
                receiving = asyncio.create_task(ws.recv())
                done, _ = await asyncio.wait({receiving} | ({stopping} if stopping else set()), return_when=asyncio.FIRST_COMPLETED)
                if receiving not in done:
                    receiving.cancel()
                    return
                try:
                    frame = receiving.result()
                except websockets.ConnectionClosed:
                    return
                batch = []
                for op, body in packets(frame if isinstance(frame, bytes) else frame.encode()):
                    if op != MESSAGE:
                        continue
                    try:
                        found = comment_of(json.loads(body), room)
                    except ValueError:
                        log.warning("a message that is not JSON was skipped (%d bytes)", len(body))
                        continue
                    if found is not None:
                        batch.append(found)
                if batch:
                    await on_comments(batch)
        finally:
            beating.cancel()
            if stopping is not None:
                stopping.cancel()
