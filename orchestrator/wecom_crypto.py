"""WeCom callback crypto (企业微信回调加解密), per ../docs/operations.md "WeCom".

`AESKey = b64decode(EncodingAESKey + "=")` (32 bytes); AES-256-CBC with IV = AESKey[:16];
PKCS#7 padding to 32-byte blocks; plaintext = 16 random bytes + 4-byte big-endian length +
message + corp id; `msg_signature = sha1(sorted([token, timestamp, nonce, encrypt]).join(''))`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import xml.etree.ElementTree as ET

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from orchestrator.errors import OrchestratorError

BLOCK = 32


class CallbackRejected(OrchestratorError):
    """A callback that is not WeCom's: bad signature, stale timestamp, wrong corp id, garbled body."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()


class WeComCrypto:
    def __init__(self, token: str, encoding_aes_key: str, corp_id: str) -> None:
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except ValueError as e:
            raise ValueError("the EncodingAESKey is not 43 characters of base64") from e
        if len(key) != 32:
            raise ValueError(f"the EncodingAESKey decodes to {len(key)} bytes, not 32: it must be the 43 characters WeCom shows")
        self.token, self.key, self.corp_id = token, key, corp_id

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def encrypt(self, message: str, random: bytes | None = None) -> str:
        body = message.encode()
        plain = (random or os.urandom(16)) + struct.pack(">I", len(body)) + body + self.corp_id.encode()
        pad = BLOCK - len(plain) % BLOCK
        enc = self._cipher().encryptor()
        return base64.b64encode(enc.update(plain + bytes([pad]) * pad) + enc.finalize()).decode()

    def decrypt(self, encrypt: str) -> str:
        try:
            data = base64.b64decode(encrypt, validate=True)
        except ValueError as e:
            raise CallbackRejected("the Encrypt field is not base64", 400) from e
        if not data or len(data) % 16:
            raise CallbackRejected("the Encrypt field is not whole AES blocks", 400)
        dec = self._cipher().decryptor()
        plain = dec.update(data) + dec.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise CallbackRejected("the message does not decrypt with our EncodingAESKey", 403)
        plain = plain[:-pad]
        (length,) = struct.unpack(">I", plain[16:20])
        message, corp = plain[20:20 + length], plain[20 + length:]
        if not hmac.compare_digest(corp, self.corp_id.encode()):
            raise CallbackRejected("the message is for another corp id", 403)
        return message.decode()

    def check(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        if not hmac.compare_digest(signature(self.token, timestamp, nonce, encrypt), msg_signature or ""):
            raise CallbackRejected("msg_signature does not match: not signed with our token", 403)

    def reply_url_check(self, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """The plain echostr WeCom expects back when it verifies the callback URL."""
        self.check(msg_signature, timestamp, nonce, echostr)
        return self.decrypt(echostr)

    def open(self, msg_signature: str, timestamp: str, nonce: str, body: bytes) -> dict[str, object]:
        """The decrypted callback as a dict of its XML fields (MemChangeList as a list of user ids)."""
        encrypt = _field(body, "Encrypt")
        self.check(msg_signature, timestamp, nonce, encrypt)
        return parse_event(self.decrypt(encrypt))

    def seal(self, message: str, timestamp: str, nonce: str) -> tuple[bytes, str]:
        """A callback body as WeCom sends it and its msg_signature (the fake WeCom in tests uses it)."""
        encrypt = self.encrypt(message)
        body = (f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName><AgentID><![CDATA[]]></AgentID>"
                f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>").encode()
        return body, signature(self.token, timestamp, nonce, encrypt)


def _field(body: bytes, name: str) -> str:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise CallbackRejected(f"the body is not XML: {e}", 400) from e
    node = root.find(name)
    if node is None or not (node.text or "").strip():
        raise CallbackRejected(f"the body has no {name}", 400)
    return (node.text or "").strip()


def parse_event(xml: str) -> dict[str, object]:
    """Fields of a decrypted event; `MemChangeList` is a list whether WeCom sent <Item> children
    or the older comma-separated text."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise CallbackRejected(f"the decrypted message is not XML: {e}", 400) from e
    out: dict[str, object] = {}
    for child in root:
        if child.tag == "MemChangeList":
            items = [(i.text or "").strip() for i in child.findall("Item")]
            if not items:
                items = [p.strip() for p in (child.text or "").split(",")]
            out["MemChangeList"] = [i for i in items if i]
        else:
            out[child.tag] = (child.text or "").strip()
    return out
