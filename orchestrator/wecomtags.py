"""Opt-outs from WeCom: a guide tags a customer with the opt-out tag (`ORCH_WECOM_OPTOUT_TAG`, 退订).

Tagging a customer in the WeCom app makes WeCom call back with `change_external_contact` /
`edit_external_contact` naming the customer (`ExternalUserID`); `externalcontact/get` then tells
the tags every staff member gave them. If one of them is the opt-out tag, the customer's WeCom
external userid is opted out of every channel (source `wecom-tag`), global across events, from the
next send batch on (the fan-out matches opt-outs by member id, phone, e-mail and WeCom external
userid). Taking the tag off later does not undo it: consent is given again, not untagged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Engine

from orchestrator import optouts
from orchestrator.optouts import Said
from orchestrator.wecom import WeComClient

SOURCE = "wecom-tag"
CHANGES = ("edit_external_contact", "add_external_contact")  # tags edited, or a customer added back already tagged


async def on_contact_change(client: WeComClient, engine: Engine, message: dict[str, Any], tag: str) -> int:
    """Record the opt-out a `change_external_contact` callback carries, if the customer has `tag`; opt-outs recorded (0 or 1)."""
    if message.get("Event") != "change_external_contact" or message.get("ChangeType") not in CHANGES:
        return 0
    customer = str(message.get("ExternalUserID") or "").strip()
    if not customer:
        return 0
    contact = await client.contact(customer)
    tags = {str(t.get("tag_name", "")) for follow in contact.get("follow_user") or [] for t in follow.get("tags") or []}
    if tag not in tags:
        return 0
    recorded, _already = await asyncio.to_thread(optouts.record, engine, [Said(None, customer.lower(), "*")], SOURCE)
    return recorded
