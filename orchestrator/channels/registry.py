"""Which transport delivers each channel of an event, and building the transports from settings."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from orchestrator.channels.base import Transport
from orchestrator.channels.console import ConsoleTransport
from orchestrator.channels.webhook import WebhookTransport
from orchestrator.errors import ConfigError
from orchestrator.playbook import Channel
from orchestrator.settings import Settings

NATIVE = {Channel.WEBHOOK.value: "webhook", Channel.CONSOLE.value: "console", Channel.SMS.value: "aliyun_sms", Channel.EMAIL.value: "smtp",
          Channel.WECOM_CUSTOMER.value: "wecom_tasks", Channel.WECOM_GROUP.value: "wecom_tasks"}


def routes(settings: Settings, mode: str) -> dict[str, str]:
    """Channel -> transport. Rehearsals send everything to the console unless ORCH_ROUTES says otherwise."""
    base = {c.value: "console" for c in Channel} if mode == "rehearsal" else dict(NATIVE)
    base.update(settings.route_map())
    return base


def missing_routes(settings: Settings, mode: str, used: set[str]) -> list[str]:
    """Why channels an event uses could not be delivered with these settings (empty: all can)."""
    table = routes(settings, mode)
    problems = []
    for channel in sorted(used):
        transport = table.get(channel)
        if transport is None:
            problems.append(
                f"channel '{channel}' has no transport yet: route it with ORCH_ROUTES (e.g. {channel}=webhook) "
                f"or schedule a rehearsal (--rehearsal) that delivers to the console"
            )
        elif transport == "webhook" and not (settings.webhook_url and settings.webhook_secret):
            problems.append(f"channel '{channel}' goes through the webhook, but ORCH_WEBHOOK_URL and ORCH_WEBHOOK_SECRET are not both set")
        elif transport == "wecom_tasks" and not settings.wecom_api_on:
            problems.append(f"channel '{channel}' goes through WeCom mass-message tasks, but ORCH_WECOM_CORP_ID and ORCH_WECOM_SECRET are not both set"
                            f" (or route it elsewhere with ORCH_ROUTES, e.g. {channel}=webhook)")
        elif transport == "aliyun_sms" and not settings.sms_on:
            problems.append(f"channel '{channel}' goes through Aliyun SMS, but ORCH_SMS_ACCESS_KEY_ID and ORCH_SMS_ACCESS_KEY_SECRET are not both set"
                            " (or route it elsewhere with ORCH_ROUTES, e.g. sms=webhook)")
        elif transport == "smtp" and not (settings.smtp_on and settings.mail_from and settings.link_secret):
            problems.append(f"channel '{channel}' goes through SMTP, but ORCH_SMTP_HOST, ORCH_MAIL_FROM and ORCH_LINK_SECRET (unsubscribe links)"
                            " are not all set (or route it elsewhere with ORCH_ROUTES, e.g. email=webhook)")
    return problems


def build_transports(settings: Settings, redis: Redis | None = None) -> dict[str, Transport]:
    """One transport of each kind the settings allow (WeCom's needs the workers' Redis: its token and quotas live there)."""
    out: dict[str, Transport] = {"console": ConsoleTransport(Path(settings.data_dir) / "console")}
    if settings.webhook_url:
        if not settings.webhook_secret:
            raise ConfigError("ORCH_WEBHOOK_URL is set but ORCH_WEBHOOK_SECRET is not; the webhook signs every request")
        out["webhook"] = WebhookTransport(settings.webhook_url, settings.webhook_secret,
                                          idempotent=settings.webhook_idempotency == "on", concurrency=settings.concurrency,
                                          timeout=settings.webhook_seconds)
    if settings.wecom_api_on and redis is not None:
        from orchestrator.channels import wecom_tasks

        out["wecom_tasks"] = wecom_tasks.from_settings(settings, redis)
    if settings.sms_on:
        from orchestrator.channels.aliyun_sms import AliyunSmsTransport

        out["aliyun_sms"] = AliyunSmsTransport.from_settings(settings, redis)  # per-number limits shared by workers through Redis
    if settings.smtp_on:
        from orchestrator.channels.smtp import SmtpTransport

        out["smtp"] = SmtpTransport.from_settings(settings)
    return out
