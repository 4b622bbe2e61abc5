"""`GET /openapi.json`: the description of the web API, written here by hand (the endpoints check
their bodies themselves) and kept true by tests/web/test_openapi.py, which matches it against the
app's routes and posts every example to a real app."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

SIGNED: list[dict[str, list[str]]] = [{"signature": []}]
EVENT = {"name": "event", "in": "path", "required": True, "schema": {"type": "string"}, "description": "the event id"}
SOURCE = {"name": "source", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$", "default": "api"},
          "description": "the feed's name; an item is known by (source, its id)"}
TIME = {"oneOf": [{"type": "string", "description": "ISO 8601; without an offset, the event's timezone"},
                  {"type": "integer", "description": "Unix milliseconds"}]}
STORED = {"200": {"description": "stored (durable) before this answer", "content": {"application/json": {"schema": {
    "type": "object", "properties": {"stored": {"type": "integer"}, "duplicates": {"type": "integer"}}}}}},
    "401": {"description": "unsigned, a wrong signature, or a timestamp more than 5 minutes away"},
    "404": {"description": "no such event"}, "409": {"description": "the event is cancelled"},
    "413": {"description": "more than 1 MB"}, "422": {"description": "an item is wrong: `error` says what, `at` where; nothing is stored"}}


def _batch(name: str, item: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"oneOf": [item, {"type": "object", "required": [name], "properties": {
        name: {"type": "array", "items": item, "minItems": 1, "maxItems": 1000}}}]}, "example": {name: [example]}}}}


COMMENT = {"type": "object", "additionalProperties": False, "required": ["platform", "message_id", "user_id", "text", "time"], "properties": {
    "platform": {"enum": ["wechat_channels", "douyin", "bilibili", "taobao", "kuaishou", "other"]}, "room": {"type": "string"},
    "message_id": {"type": "string", "maxLength": 128}, "user_id": {"type": "string", "maxLength": 128}, "name": {"type": "string"},
    "text": {"type": "string", "maxLength": 2000}, "time": TIME}}
PAYMENT = {"type": "object", "additionalProperties": False, "required": ["payment_id", "kind", "order_id", "person", "amount_fen", "time"],
           "properties": {"payment_id": {"type": "string"}, "kind": {"enum": ["deposit", "refund", "order"]}, "order_id": {"type": "string"},
                          "person": {"type": "string"}, "product": {"type": "string", "description": "a featured product id; deposits name one"},
                          "amount_fen": {"type": "integer", "minimum": 0, "description": "CNY in fen (1 yuan = 100), never a decimal"},
                          "guide": {"type": "string", "maxLength": 64,
                                    "description": "the guide id the shop credits with the sale; without it, the guide the person joined "
                                                   "the group through, else the member's guide in the audience file"},
                          "time": TIME}}
VISIT = {"type": "object", "additionalProperties": False, "required": ["visit_id", "kind", "person", "time"], "properties": {
    "visit_id": {"type": "string"}, "kind": {"enum": ["enter", "exit"]}, "person": {"type": "string"}, "time": TIME}}
JOIN = {"type": "object", "additionalProperties": False, "required": ["person"], "properties": {
    "person": {"type": "string", "maxLength": 64}, "group": {"type": "integer"}, "guide": {"type": "string"}}}

OPTOUT = {"type": "object", "additionalProperties": False, "properties": {
    "member": {"type": "string", "maxLength": 64, "description": "a member id (give this or address)"},
    "address": {"type": "string", "maxLength": 255, "description": "a phone number or e-mail address (matched lower-cased)"},
    "channel": {"enum": ["*", "sms", "email", "wecom_customer", "wecom_group", "webhook", "console"], "default": "*"}}}


def spec() -> dict[str, Any]:
    ingest = {"security": SIGNED, "parameters": [EVENT, SOURCE], "responses": STORED}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Live-stream commerce event orchestrator", "version": "1",
                 "description": "Signed ingestion for what the engine does not see itself, joins and groups for platforms without callbacks, "
                                "and platform callbacks. See docs/operations.md."},
        "components": {"securitySchemes": {
            "signature": {"type": "apiKey", "in": "header", "name": "X-Orchestrator-Signature",
                          "description": "v1=<hex HMAC-SHA256(ORCH_INGEST_SECRET, '<X-Orchestrator-Timestamp>.' + body)>; "
                                         "X-Orchestrator-Timestamp: unix seconds, within 5 minutes"},
            "bearer": {"type": "http", "scheme": "bearer", "description": "ORCH_API_TOKEN"}}},
        "paths": {
            "/api/events/{event}/comments": {"post": {**ingest, "summary": "Live comments (the draws' screens)",
                                                      "requestBody": _batch("comments", COMMENT, {
                                                          "platform": "wechat_channels", "room": "r1", "message_id": "m1", "user_id": "u1",
                                                          "name": "张小明", "text": "焕新！", "time": "2027-06-10T19:59:58+08:00"})}},
            "/api/events/{event}/payments": {"post": {**ingest, "summary": "Deposits, refunds and orders (amounts in fen)",
                                                      "requestBody": _batch("payments", PAYMENT, {
                                                          "payment_id": "p1", "kind": "order", "order_id": "o1", "person": "u1",
                                                          "amount_fen": 259900, "time": "2027-06-10 20:05"})}},
            "/api/events/{event}/visits": {"post": {**ingest, "summary": "Entries to and exits from the live room",
                                                    "requestBody": _batch("visits", VISIT, {
                                                        "visit_id": "v1", "kind": "enter", "person": "u1", "time": "2027-06-10 19:58"})}},
            "/api/events/{event}/joins": {"post": {"security": [{"bearer": []}], "parameters": [EVENT], "summary": "Joins on platforms without callbacks",
                                                   "requestBody": _batch("joins", JOIN, {"person": "m000001", "group": 1}),
                                                   "responses": {"200": {"description": "`{recorded, already}`"}, "401": {"description": "no or a wrong token"},
                                                                 "422": {"description": "a bad item, named; nothing stored"}}}},
            "/api/optouts": {"post": {"security": [{"bearer": []}], "summary": "Opt-outs: global across events, in effect before the next send",
                                      "requestBody": _batch("optouts", OPTOUT, {"address": "13900000001", "channel": "sms"}),
                                      "responses": {"200": {"description": "`{recorded, already}`"}, "401": {"description": "no or a wrong token"},
                                                    "422": {"description": "a bad item, named; nothing stored"}}}},
            "/api/events/{event}/groups": {"post": {
                "security": [{"bearer": []}], "summary": "A group code added to the pool (the body is its picture), or ?wecom_chat=",
                "parameters": [EVENT, {"name": "expires", "in": "query", "schema": {"type": "string"}},
                               {"name": "name", "in": "query", "schema": {"type": "string"}},
                               {"name": "capacity", "in": "query", "schema": {"type": "integer"}},
                               {"name": "margin", "in": "query", "schema": {"type": "integer"}},
                               {"name": "wecom_chat", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {"content": {"image/png": {}, "image/jpeg": {}}},
                "responses": {"201": {"description": "`{number}`"}, "200": {"description": "`{join_ways_updated}` (wecom_chat)"},
                              "409": {"description": "the event is cancelled or closed"}, "422": {"description": "what is wrong, and where"}}}},
            "/ingest/douyin/{event}": {"post": {"parameters": [EVENT], "summary": "Douyin's comment push, signed by Douyin (x-signature)",
                                                "responses": {"200": {"description": "`{stored, duplicates}`"}, "401": {"description": "a wrong x-signature"}}}},
            "/ingest/wxlivespy/{event}/{key}": {"post": {"parameters": [EVENT, {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                                                         "summary": "wxlivespy's forward (plain or gzipped JSON); the key in the path is the secret",
                                                         "responses": {"200": {"description": "`{stored, duplicates}`"}, "429": {"description": "too many a minute"}}}},
            "/inbound/sms/{key}": {"post": {"parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                                             "summary": "Aliyun's push of SMS replies (上行); TD, T, N, R, 退订 opt the number out of SMS. "
                                                        "The key in the path (ORCH_SMS_INBOUND_KEY) is the secret",
                                             "requestBody": {"content": {"application/json": {"example": [
                                                 {"phone_number": "13900000001", "content": "TD", "send_time": "2027-06-10 19:05:00",
                                                  "sign_name": "品牌", "dest_code": "1234", "sequence_id": 1}]}}},
                                             "responses": {"200": {"description": "`{\"code\": 0, \"msg\": \"成功\"}`"},
                                                           "404": {"description": "a wrong key"}, "422": {"description": "a bad reply, named"}}}},
            "/inbound/sms-report/{key}": {"post": {"parameters": [{"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}],
                                                    "summary": "Aliyun's push of SMS delivery receipts (状态报告, SmsReport); each is matched "
                                                               "to its send by BizId and number. The key in the path (ORCH_SMS_INBOUND_KEY) is the secret",
                                                    "requestBody": {"content": {"application/json": {"example": [
                                                        {"phone_number": "13900000001", "send_time": "2027-06-10 19:05:00",
                                                         "report_time": "2027-06-10 19:05:03", "success": True, "err_code": "DELIVERED",
                                                         "err_msg": "用户接收成功", "sms_size": "1", "biz_id": "900619746936498440^0", "out_id": ""}]}}},
                                                    "responses": {"200": {"description": "`{\"code\": 0, \"msg\": \"成功\"}`"},
                                                                  "404": {"description": "a wrong key"}, "422": {"description": "a bad receipt, named"}}}},
            "/wecom/callback": {"get": {"summary": "WeCom's URL check", "responses": {"200": {"description": "the decrypted echostr"}}},
                                "post": {"summary": "WeCom member-change callbacks (encrypted, signed)",
                                         "responses": {"200": {"description": "success"}, "403": {"description": "signature, replay or corp id"}}}},
        },
    }


async def openapi(_request: Request) -> JSONResponse:
    return JSONResponse(spec())
