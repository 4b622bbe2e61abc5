"""The playbook's SMS templates and signs, checked against the Aliyun account before anything is sent.

`validate` (when Aliyun is configured) and `schedule` (when SMS goes through Aliyun) ask Aliyun
about every template (`QuerySmsTemplate`) and sign (`QuerySmsSign`) the playbook names, once each,
and report at the template's or sign's line what would make every send fail later:

- a template or sign the account does not have (`isv.SMS_TEMPLATE_ILLEGAL`, `isv.SMS_SIGNATURE_ILLEGAL`),
- one still under review (审核中) or rejected (with Aliyun's reason),
- a template whose approved text is not the playbook's `text` (the validator checks parameters and
  the opt-out on the playbook's text, so it must be the template's),
- a marketing template (推广短信) the playbook does not mark `marketing: true`.

Wrong credentials are a ConfigError; Aliyun not answering is reported once, as an error (a check
that could not be made does not pass).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

from orchestrator.channels.aliyun_sms import AliyunSmsTransport
from orchestrator.diagnostics import Diagnostic, Severity
from orchestrator.i18n import _
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import SmsTemplate
from orchestrator.settings import Settings
from orchestrator.validate import all_messages

TEMPLATE_STATUS = {0: "审核中 (under review)", 1: "approved", 2: "未通过 (rejected)", 10: "已取消 (cancelled)"}
MARKETING = 1  # TemplateType of 推广短信


def sms_messages(loaded: LoadedPlaybook) -> Iterator[tuple[tuple[Any, ...], SmsTemplate]]:
    """(path in the playbook, SMS template) of every message that has one."""
    for where, msg in all_messages(loaded.playbook):
        if msg.sms is not None:
            yield tuple(where) + ("sms",), msg.sms


def _same_text(a: str, b: str) -> bool:
    return re.sub(r"\s+", "", a) == re.sub(r"\s+", "", b)


async def check(settings: Settings, loaded: LoadedPlaybook) -> list[Diagnostic]:
    """Every problem Aliyun's account has with the playbook's SMS templates and signs (empty: none)."""
    used = list(sms_messages(loaded))
    if not used:
        return []
    sms = AliyunSmsTransport.from_settings(settings)
    found: list[Diagnostic] = []

    def error(path: tuple[Any, ...], code: str, message: str) -> None:
        file, line, col = loaded.at(path)
        found.append(Diagnostic(file, line, col, code, message, Severity.ERROR))

    try:
        codes = sorted({t.template_code for _p, t in used})
        signs = sorted({t.sign for _p, t in used})
        try:
            answers = await asyncio.gather(*[sms.ask("QuerySmsTemplate", {"TemplateCode": c}) for c in codes],
                                           *[sms.ask("QuerySmsSign", {"SignName": s}) for s in signs])
        except ConnectionError as e:
            path, _t = used[0]
            error(path, "sms-unchecked", _("the SMS templates could not be checked: {error}; try again, or check ORCH_SMS_API").format(error=e))
            return found
        templates = dict(zip(codes, answers[:len(codes)]))
        sign_answers = dict(zip(signs, answers[len(codes):]))
        for path, t in used:
            info = templates[t.template_code]
            status = info.get("TemplateStatus")
            if info.get("Code") != "OK":
                error(path + ("template_code",), "sms-template-unknown", _(
                    "Aliyun has no usable template {code} on this account ({answer}); use the code the SMS console shows").format(
                    code=t.template_code, answer=f"{info.get('Code')}: {info.get('Message', '')}"))
            elif status != 1:
                reason = f" ({info.get('Reason')})" if info.get("Reason") else ""
                error(path + ("template_code",), "sms-template-not-approved", _(
                    "template {code} is {status}{reason}: Aliyun sends only approved templates").format(
                    code=t.template_code, status=TEMPLATE_STATUS.get(int(status or 0), str(status)), reason=reason))
            else:
                content = str(info.get("TemplateContent", ""))
                if content and not _same_text(content, t.text):
                    error(path + ("text",), "sms-template-text", _(
                        "text is not template {code}'s approved text: {content}").format(code=t.template_code, content=content))
                if info.get("TemplateType") == MARKETING and not t.marketing:
                    error(path + ("marketing",), "sms-template-marketing", _(
                        "template {code} is a marketing template (推广短信) on Aliyun: set marketing: true").format(code=t.template_code))
            sign = sign_answers[t.sign]
            if sign.get("Code") != "OK":
                error(path + ("sign",), "sms-sign-unknown", _("Aliyun has no sign '{sign}' on this account ({answer})").format(
                    sign=t.sign, answer=f"{sign.get('Code')}: {sign.get('Message', '')}"))
            elif sign.get("SignStatus") != 1:
                reason = f" ({sign.get('Reason')})" if sign.get("Reason") else ""
                error(path + ("sign",), "sms-sign-not-approved", _("sign '{sign}' is not approved yet{reason}").format(sign=t.sign, reason=reason))
    finally:
        await sms.close()
    unique: dict[tuple[str, int, int, str], Diagnostic] = {}
    for d in found:  # two reminders with one template: each at its own line, but not twice at one
        unique.setdefault((d.file, d.line, d.col, d.code), d)
    return list(unique.values())
