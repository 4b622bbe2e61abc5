"""SMS replies: a reply of TD, T, N, R or 退订 to any of our messages opts its number out of SMS.

Aliyun pushes replies (上行短信) to an HTTP endpoint as a JSON array of
`{"phone_number", "content", "send_time", "sign_name", "dest_code", "sequence_id"}`; the push is not
signed, so the endpoint's path carries a secret key. Every reply is checked; an opt-out is recorded
once per number (global across events, source `sms-reply`) and holds from the next send batch on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.ingest import BadInput
from orchestrator.optouts import Said
from orchestrator.sheets import normalise_phone

WORDS = {"TD", "T", "N", "R", "退订", "TD退订", "退订TD", "STOP", "UNSUBSCRIBE"}
_NOISE = re.compile(r"[\s\W_]+", re.UNICODE)  # spaces and punctuation around the word: "td。" and " T " count


def is_opt_out(content: str) -> bool:
    """Whether a reply says stop: one of WORDS alone (any case, punctuation ignored), or containing 退订."""
    word = _NOISE.sub("", content).upper()
    return word in WORDS or "退订" in content


@dataclass(frozen=True, slots=True)
class Replies:
    opt_outs: list[Said]
    others: int  # replies that are not an opt-out (kept nowhere: they are not ours to read)


def read(body: Any) -> Replies:
    """The opt-outs in a pushed batch (a JSON array, or one object); BadInput names what is wrong and where."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise BadInput("expected a JSON array of replies with at least one", "body")
    said, others = [], 0
    for i, item in enumerate(items):
        at = f"[{i}]"
        if not isinstance(item, dict):
            raise BadInput("each reply must be an object", at)
        phone, content = item.get("phone_number"), item.get("content")
        if not isinstance(phone, str) or not isinstance(content, str):
            raise BadInput("a reply has 'phone_number' and 'content' (strings)", at)
        number = normalise_phone(phone.strip())
        if number is None:
            raise BadInput(f"phone_number {phone[:20]!r} is not a mainland mobile number", f"{at}.phone_number")
        if is_opt_out(content):
            said.append(Said(None, number, "sms"))
        else:
            others += 1
    return Replies(said, others)
