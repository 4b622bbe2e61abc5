"""WeChat Channels (视频号) comments as the wxlivespy capture tool forwards them.

The tool posts plain or gzipped JSON, unsigned and never retried, so it is authenticated by an
unguessable secret in the URL path (derived from ORCH_INGEST_SECRET and the event, printed by
`orchestrator ingest-urls EVENT`). Only `comment` events count; `seq` is per room and may be sent
again, so a comment is known by its live id and seq.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from typing import Any

from orchestrator.ingest import BadInput


def path_key(secret: str, event_id: str) -> str:
    return hmac.new(secret.encode(), f"wxlivespy:{event_id}".encode(), hashlib.sha256).hexdigest()[:32]


def decode(body: bytes, encoding: str | None) -> Any:
    raw = body
    if (encoding or "").lower() == "gzip" or body[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(body)
        except (OSError, EOFError) as e:
            raise BadInput(f"the body says gzip but does not decompress: {e}", "body") from e
    try:
        return json.loads(raw)
    except ValueError as e:
        raise BadInput(f"the body is not JSON: {e}", "body") from e


def comments(data: Any) -> dict[str, Any]:
    """The forwarded events' comments as a batch for `ingest.comment_rows` (others are skipped)."""
    if not isinstance(data, dict) or not isinstance(data.get("decoded_data"), dict):
        raise BadInput("expected wxlivespy's forward: {\"decoded_data\": {\"events\": [...], \"live_info\": {...}}}", "body")
    decoded = data["decoded_data"]
    live = decoded.get("live_info") or {}
    live_id = str(live.get("live_id") or "")
    events = decoded.get("events")
    if not isinstance(events, list):
        raise BadInput("decoded_data.events must be a list", "body.decoded_data.events")
    out = []
    for e in events:
        if not isinstance(e, dict) or e.get("decoded_type") != "comment":
            continue
        seq = e.get("seq")
        out.append({"platform": "wechat_channels", "room": live_id, "message_id": f"{live_id}:{seq}" if seq is not None else e.get("msg_id"),
                    "user_id": e.get("sec_openid"), "name": e.get("nickname") or "", "text": e.get("content", ""),
                    "time": int(e["msg_time"]) * 1000 if isinstance(e.get("msg_time"), int | float) else e.get("msg_time")})
    return {"comments": out}
