"""SMS delivery receipts (状态报告): did the message reach the phone, as the carrier reported it.

An SMS is `sent` in the ledger once Aliyun took it (its BizId is the row's provider id); whether
the phone got it comes later. With HTTP push configured in the SMS console (回执消息: SmsReport),
Aliyun POSTs receipts to `/inbound/sms-report/<key>` as a JSON array of
`{"phone_number", "send_time", "report_time", "success", "err_code", "err_msg", "sms_size",
"biz_id", "out_id"}`, several per push, for single and shared calls alike.

Receipts are kept as they come, once per (BizId, number); a ledger row's delivery is the receipt
whose BizId is its provider id and whose number is its member's phone. So a receipt that arrives
before the worker has recorded the send's outcome, a receipt pushed twice, or receipts out of
order all end the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestrator.ingest import BadInput
from orchestrator.sheets import normalise_phone
from orchestrator.store import Member, Send, SmsReceipt

RECEIPT = SmsReceipt.__table__  # type: ignore[attr-defined]
SEND = Send.__table__  # type: ignore[attr-defined]
MEMBER = Member.__table__  # type: ignore[attr-defined]
BEIJING = timezone(timedelta(hours=8))
MAX_RECEIPTS = 5000  # per push (Aliyun sends far fewer)


@dataclass(frozen=True, slots=True)
class Receipt:
    biz_id: str
    phone: str
    delivered: bool
    code: str
    message: str | None
    reported_at: datetime | None


def read(body: Any) -> list[Receipt]:
    """The receipts of a push (a JSON array, or one object); BadInput names what is wrong and where."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise BadInput("expected a JSON array of delivery receipts with at least one", "body")
    if len(items) > MAX_RECEIPTS:
        raise BadInput(f"at most {MAX_RECEIPTS:,} receipts per push", "body")
    out = []
    for i, item in enumerate(items):
        at = f"[{i}]"
        if not isinstance(item, dict):
            raise BadInput("each receipt must be an object", at)
        biz, phone, success = item.get("biz_id"), item.get("phone_number"), item.get("success")
        if not isinstance(biz, str) or not biz.strip() or len(biz) > 128:
            raise BadInput("'biz_id' is the BizId SendSms answered (a string of at most 128 characters)", f"{at}.biz_id")
        if not isinstance(phone, str):
            raise BadInput("'phone_number' is a string", f"{at}.phone_number")
        number = normalise_phone(phone.strip())
        if number is None:
            raise BadInput(f"phone_number {phone[:20]!r} is not a mainland mobile number", f"{at}.phone_number")
        if not isinstance(success, bool):
            raise BadInput("'success' is true or false", f"{at}.success")
        code = item.get("err_code")
        code = str(code)[:64] if code not in (None, "") else ("DELIVERED" if success else "UNKNOWN")
        message = item.get("err_msg")
        out.append(Receipt(biz.strip(), number, success, code, str(message)[:500] if message not in (None, "") else None,
                           _beijing(item.get("report_time"), f"{at}.report_time")))
    return out


def _beijing(value: Any, at: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except ValueError:
        raise BadInput(f"report_time {str(value)[:30]!r} is not 'YYYY-MM-DD HH:MM:SS'", at) from None


def record(engine: Engine, receipts: list[Receipt]) -> tuple[int, int]:
    """Keep receipts not seen before (the first of a (BizId, number) wins); (kept now, already known)."""
    if not receipts:
        return 0, 0
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    unique = list({(r.biz_id, r.phone): r for r in reversed(receipts)}.values())
    rows = [{"biz_id": r.biz_id, "phone": r.phone, "delivered": r.delivered, "code": r.code, "message": r.message,
             "reported_at": r.reported_at, "received_at": datetime.now(timezone.utc)} for r in unique]
    with engine.begin() as conn:
        kept = conn.execute(insert(RECEIPT).on_conflict_do_nothing(), rows).rowcount or 0
    return kept, len(receipts) - kept


def _joined(event_id: str) -> Any:
    return (SEND.join(MEMBER, and_(MEMBER.c.event_id == SEND.c.event_id, MEMBER.c.member_id == SEND.c.member_id))
            .join(RECEIPT, and_(RECEIPT.c.biz_id == SEND.c.provider_id, RECEIPT.c.phone == MEMBER.c.phone)))


def delivery(engine: Engine, event_id: str) -> dict[str, dict[str, int]]:
    """step -> {"delivered": n, "undelivered": n} for the event's SMS that have a receipt."""
    out: dict[str, dict[str, int]] = defaultdict(dict)
    stmt = (select(SEND.c.step_id, RECEIPT.c.delivered, func.count()).select_from(_joined(event_id))
            .where(SEND.c.event_id == event_id, SEND.c.transport == "aliyun_sms", SEND.c.state == "sent")
            .group_by(SEND.c.step_id, RECEIPT.c.delivered))
    with engine.connect() as conn:
        for step, delivered, n in conn.execute(stmt):
            out[step]["delivered" if delivered else "undelivered"] = int(n)
    return dict(out)


def undelivered(engine: Engine, event_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The event's SMS the carrier reported as not delivered, with its reason, in send order."""
    stmt = (select(SEND.c.step_id, SEND.c.member_id, MEMBER.c.phone, RECEIPT.c.code, RECEIPT.c.message, RECEIPT.c.reported_at)
            .select_from(_joined(event_id))
            .where(SEND.c.event_id == event_id, SEND.c.transport == "aliyun_sms", SEND.c.state == "sent", RECEIPT.c.delivered.is_(False))
            .order_by(SEND.c.id).limit(limit))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]
