"""One-click unsubscribe links: a signed token naming who said no, for which address and channel.

    token = b64url(JSON ["u1", channel, member_id, address]) "." b64url(HMAC-SHA256(secret, payload))

URL-safe base64 without padding. Tokens never expire: a link in an old e-mail must keep working
(Advertising Law art. 43, PIPL art. 15: refusing is always easy). Changing ORCH_LINK_SECRET
breaks every link already sent, so it is set once. The web side (`web/unsubscribe.py`) shows the
confirmation page and records the opt-out; this module is the engine's half (the e-mail channel
writes the links).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

VERSION = "u1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()  # not hmac.digest: it releases the GIL (channels/webhook.py)


def link_token(secret: str, member_id: str, address: str, channel: str = "email") -> str:
    """The token of `member_id`'s link for `address` on `channel`."""
    payload = json.dumps([VERSION, channel, member_id, address], ensure_ascii=False, separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_mac(secret, payload))}"


def read_token(secret: str, token: str) -> tuple[str, str, str] | None:
    """(member_id, address, channel) of a token signed with `secret`; None if it is malformed or tampered with."""
    if len(token) > 2000 or token.count(".") != 1:
        return None
    body, _sep, signature = token.partition(".")
    try:
        payload, mac = _unb64(body), _unb64(signature)
    except (binascii.Error, ValueError):  # not base64, or not ASCII
        return None
    if not hmac.compare_digest(mac, _mac(secret, payload)):
        return None
    try:
        data = json.loads(payload.decode())
    except ValueError:  # UnicodeDecodeError included
        return None
    if not (isinstance(data, list) and len(data) == 4 and data[0] == VERSION and all(isinstance(x, str) and x for x in data[1:])):
        return None
    _version, channel, member_id, address = data
    return member_id, address, channel


def url(public_url: str, token: str) -> str:
    """The link itself: `<ORCH_PUBLIC_URL>/u/<token>`."""
    return f"{public_url.rstrip('/')}/u/{token}"
