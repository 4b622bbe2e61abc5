"""Every platform's fake at once, for `orchestrator rehearse --fake-platforms` (and the demo's):
a manager rehearses the real channels end to end on one machine. SMS go through our Aliyun client
to the fake Aliyun (signatures checked, per-number limits kept), e-mail through our SMTP client to
a real SMTP server on loopback, WeCom mass-message tasks to the fake WeCom, whose guides confirm
each task a couple of event minutes after it is made; staff alerts go to its group robot.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from orchestrator.fakes.aliyun_sms import FakeAliyunSms, RunningAliyunSms
from orchestrator.fakes.smtp import FakeSmtp
from orchestrator.fakes.wecom import FakeWeCom, RunningWeCom

CONFIRM_AFTER = 120.0  # event seconds a fake guide takes to confirm a mass-message task
ROUTES = "sms=aliyun_sms,email=smtp,wecom_customer=wecom_tasks"


@dataclass
class FakePlatforms:
    sms: FakeAliyunSms
    wecom: FakeWeCom
    smtp: FakeSmtp
    link_secret: str
    inbound_key: str  # the path key of our SMS receipt (and reply) webhooks, as set in Aliyun's console

    def env(self) -> dict[str, str]:
        """The settings that send every channel of a rehearsal to these fakes through the real transports."""
        return {**self.sms.env(), **self.wecom.env(), **self.smtp.settings(), "ORCH_MAIL_FROM": "rehearsal@example.com",
                "ORCH_LINK_SECRET": self.link_secret, "ORCH_SMS_INBOUND_KEY": self.inbound_key, "ORCH_ROUTES": ROUTES}

    def push_receipts_to(self, web_url: str) -> None:
        """Have the fake Aliyun push each SMS's delivery receipt to the web app at `web_url`, as
        Aliyun does with HTTP push (SmsReport) set up: the report and `status` show which reached the phone."""
        self.sms.report_to = f"{web_url.rstrip('/')}/inbound/sms-report/{self.inbound_key}"

    def summary(self) -> list[str]:
        """What each fake platform received, a line each."""
        sms = self.sms.snapshot()
        mail = self.smtp.received()
        tasks = list(self.wecom.tasks.values())
        delivered = sum(1 for t in tasks for status in t["results"].values() if status == 1)
        pushed = sum(1 for status, answer in self.sms.pushes if status == 200)
        return [
            f"Aliyun SMS (fake): {len(sms):,} messages to {len({a.phone for a in sms}):,} numbers in {self.sms.total_requests():,} requests"
            + (f"; {pushed:,} pushes of delivery receipts taken by the web app" if self.sms.report_to else ""),
            f"SMTP (fake): {len(mail):,} e-mails to {len({m.recipient for m in mail}):,} addresses",
            f"WeCom (fake): {len(tasks):,} mass-message tasks, {sum(t['confirmed'] for t in tasks):,} confirmed by their guides, "
            f"{sum(t['cancelled'] for t in tasks):,} cancelled, {delivered:,} messages delivered; "
            f"{len(self.wecom.robot_messages):,} staff alerts from the group robot",
        ]


@contextlib.contextmanager
def running(speed: float) -> Iterator[FakePlatforms]:
    """The fakes on loopback for a rehearsal whose clock runs `speed` times real time."""
    with RunningAliyunSms() as sms, RunningWeCom(FakeWeCom(confirm_after=max(0.05, CONFIRM_AFTER / speed))) as wecom, FakeSmtp() as smtp:
        yield FakePlatforms(sms, wecom, smtp, secrets.token_hex(16), secrets.token_hex(16))
