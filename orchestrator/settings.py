"""Settings from the environment (and an optional `.env` file beside the process).

Built once per entry point (CLI, web app, worker) and passed down; never read at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    env: str
    default: str | None
    help: str


SETTINGS = (
    Setting("DATABASE_URL", "sqlite:///orchestrator.db", "SQLAlchemy URL of the database (PostgreSQL in production)"),
    Setting("REDIS_URL", None, "Redis URL; unset starts an embedded Redis for one-machine use"),
    Setting("ORCH_PUBLIC_URL", "http://127.0.0.1:8000", "base URL that poster QR codes and links carry"),
    Setting("ORCH_LANG", None, "language of messages, 'zh' or 'en'; unset follows the locale"),
    Setting("ORCH_DATA_DIR", ".orchestrator", "where the embedded Redis keeps its data, reports and logs are written"),
    Setting("ORCH_WEBHOOK_URL", None, "http(s) URL the signed JSON webhook channel posts to (checked when a process starts)"),
    Setting("ORCH_WEBHOOK_SECRET", None, "HMAC-SHA256 key of the webhook signature (never in a playbook)"),
    Setting("ORCH_WEBHOOK_TIMEOUT", "10", "seconds the webhook's receiver has to answer a request"),
    Setting("ORCH_WEBHOOK_IDEMPOTENCY", "on", "'on': send an Idempotency-Key and resend after a crash; 'off': never resend, mark unknown"),
    Setting("ORCH_ROUTES", None, "which transport delivers each channel, e.g. 'sms=webhook,email=console'; rehearsals default every channel to console"),
    Setting("ORCH_SEND_CONCURRENCY", "50", "sends in flight per worker"),
    Setting("ORCH_API_TOKEN", None, "bearer token of the web API (joins reported by platforms without callbacks); unset, the API is off"),
    Setting("ORCH_INGEST_SECRET", None, "HMAC-SHA256 key that signs comments and payments sent to the ingestion API; unset, it is off"),
    Setting("ORCH_DOUYIN_SECRET", None, "the Douyin interactive-game app secret that signs its comment push; unset, the push is off"),
    Setting("ORCH_WECOM_API", "https://qyapi.weixin.qq.com/cgi-bin/", "base URL of the WeCom server API"),
    Setting("ORCH_WECOM_CORP_ID", None, "WeCom corp id (企业ID); with the secret, join ways are made and joins looked up"),
    Setting("ORCH_WECOM_SECRET", None, "secret of the WeCom app with customer contact rights (客户联系 Secret)"),
    Setting("ORCH_WECOM_TOKEN", None, "the callback Token set in WeCom's admin console (回调 Token)"),
    Setting("ORCH_WECOM_AES_KEY", None, "the callback EncodingAESKey, 43 characters (回调 EncodingAESKey)"),
    Setting("ORCH_WECOM_ROBOT_KEY", None, "key of the WeCom group robot that posts staff alerts into an internal group (its webhook URL's key=)"),
    Setting("ORCH_WECOM_QUOTA", None, "mass messages a customer may receive a month through WeCom (unset: the month's number of days, WeCom's default)"),
    Setting("ORCH_WECOM_OPTOUT_TAG", "退订", "a WeCom customer tag (标签) meaning 'send me nothing': a guide tagging a customer with it opts them out of every channel"),
    Setting("ORCH_POSTER_FONT", None, "an OpenType/TrueType font for posters (default: the shipped Noto Sans CJK SC subset, GB 2312)"),
    Setting("ORCH_SMS_API", "https://dysmsapi.aliyuncs.com/", "base URL of Aliyun's SMS API (SendSms, version 2017-05-25)"),
    Setting("ORCH_SMS_ACCESS_KEY_ID", None, "the Aliyun AccessKey id of a RAM user allowed dysms:SendSms; with the secret, the sms channel is on"),
    Setting("ORCH_SMS_ACCESS_KEY_SECRET", None, "that AccessKey's secret (never in a playbook)"),
    Setting("ORCH_SMS_INBOUND_KEY", None, "the secret path key of the SMS reply webhook (/inbound/sms/<key>): replies TD, T, N, R, 退订 opt out"),
    Setting("ORCH_SMS_SIGNATURE", "v3", "how requests are signed: 'v3' (ACS3-HMAC-SHA256, the current SDK's) or 'v1' (HMAC-SHA1, the legacy one)"),
    Setting("ORCH_SMTP_HOST", None, "SMTP server of the email channel; unset, the email channel is off"),
    Setting("ORCH_SMTP_PORT", "587", "its port (465: implicit TLS, 587: STARTTLS, 25: plain)"),
    Setting("ORCH_SMTP_USER", None, "SMTP login, if the server wants one"),
    Setting("ORCH_SMTP_PASSWORD", None, "SMTP password (never in a playbook)"),
    Setting("ORCH_SMTP_TLS", "starttls", "'starttls', 'tls' (implicit, port 465) or 'off' (loopback and tests only)"),
    Setting("ORCH_MAIL_FROM", None, "the From address of reminders, e.g. '品牌 <live@brand.example>'"),
    Setting("ORCH_LINK_SECRET", None, "HMAC-SHA256 key of one-click unsubscribe links in e-mails (never in a playbook)"),
)


TRANSPORTS = ("webhook", "console", "aliyun_sms", "smtp", "wecom_tasks")


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    public_url: str
    lang: str | None
    data_dir: str
    webhook_url: str | None
    webhook_secret: str | None
    webhook_timeout: str
    webhook_idempotency: str
    routes: str | None
    send_concurrency: str
    api_token: str | None
    ingest_secret: str | None
    douyin_secret: str | None
    wecom_api: str
    wecom_corp_id: str | None
    wecom_secret: str | None
    wecom_token: str | None
    wecom_aes_key: str | None
    wecom_robot_key: str | None
    wecom_quota_text: str | None
    wecom_optout_tag: str
    poster_font: str | None
    sms_api: str
    sms_access_key_id: str | None
    sms_access_key_secret: str | None
    sms_inbound_key: str | None
    sms_signature: str
    smtp_host: str | None
    smtp_port: str
    smtp_user: str | None
    smtp_password: str | None
    smtp_tls: str
    mail_from: str | None
    link_secret: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env") -> Settings:
        """Values from `environ` (default os.environ), falling back to `.env`, then defaults."""
        merged: dict[str, str | None] = {}
        if env_file is not None and Path(env_file).is_file():
            merged.update(dotenv_values(env_file))
        merged.update(os.environ if environ is None else environ)
        values = {}
        for field, setting in zip(fields(cls), SETTINGS, strict=True):
            raw = merged.get(setting.env)
            values[field.name] = raw if raw not in (None, "") else setting.default
        if values["lang"] is not None and values["lang"] not in ("zh", "en"):
            raise ConfigError(f"ORCH_LANG has value {values['lang']!r}; use 'zh' or 'en'")
        if not str(values["public_url"]).startswith(("http://", "https://")):
            raise ConfigError(f"ORCH_PUBLIC_URL has value {values['public_url']!r}; it must start with http:// or https://")
        if values["webhook_url"] is not None and not _http_url(str(values["webhook_url"])):
            raise ConfigError(f"ORCH_WEBHOOK_URL has value {values['webhook_url']!r}; use an http:// or https:// URL with a host,"
                              " e.g. https://hooks.example.com/orchestrator")
        if _seconds(str(values["webhook_timeout"])) is None:
            raise ConfigError(f"ORCH_WEBHOOK_TIMEOUT has value {values['webhook_timeout']!r}; use a number of seconds above 0, e.g. 10 or 2.5")
        if values["webhook_idempotency"] not in ("on", "off"):
            raise ConfigError(f"ORCH_WEBHOOK_IDEMPOTENCY has value {values['webhook_idempotency']!r}; use 'on' or 'off'")
        if not str(values["send_concurrency"]).isdigit() or int(str(values["send_concurrency"])) < 1:
            raise ConfigError(f"ORCH_SEND_CONCURRENCY has value {values['send_concurrency']!r}; use a whole number of at least 1")
        if values["poster_font"] is not None and not Path(str(values["poster_font"])).is_file():
            raise ConfigError(f"ORCH_POSTER_FONT has value {values['poster_font']!r}; no such font file")
        if values["sms_signature"] not in ("v3", "v1"):
            raise ConfigError(f"ORCH_SMS_SIGNATURE has value {values['sms_signature']!r}; use 'v3' or 'v1'")
        if values["smtp_tls"] not in ("starttls", "tls", "off"):
            raise ConfigError(f"ORCH_SMTP_TLS has value {values['smtp_tls']!r}; use 'starttls', 'tls' or 'off'")
        if not str(values["smtp_port"]).isdigit() or not 0 < int(str(values["smtp_port"])) < 65536:
            raise ConfigError(f"ORCH_SMTP_PORT has value {values['smtp_port']!r}; use a port number")
        quota = values["wecom_quota_text"]
        if quota is not None and (not str(quota).isdigit() or int(str(quota)) < 1):
            raise ConfigError(f"ORCH_WECOM_QUOTA has value {quota!r}; use a whole number of mass messages a month, at least 1")
        aes = values["wecom_aes_key"]
        if aes is not None and (len(str(aes)) != 43 or not re.fullmatch(r"[A-Za-z0-9+/]{43}", str(aes))):
            raise ConfigError("ORCH_WECOM_AES_KEY must be the 43-character EncodingAESKey WeCom shows (letters and digits)")
        settings = cls(**values)  # type: ignore[arg-type]
        settings.route_map()  # refuse bad routes now, not at the first send
        return settings

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def wecom_api_on(self) -> bool:
        """Join ways can be made and joins looked up."""
        return bool(self.wecom_corp_id and self.wecom_secret)

    @property
    def wecom_callbacks_on(self) -> bool:
        return bool(self.wecom_corp_id and self.wecom_token and self.wecom_aes_key)

    @property
    def font_path(self) -> Path:
        from orchestrator.poster import FONT

        return Path(self.poster_font) if self.poster_font else FONT

    @property
    def wecom_quota(self) -> int | None:
        return int(self.wecom_quota_text) if self.wecom_quota_text else None

    @property
    def sms_on(self) -> bool:
        return bool(self.sms_access_key_id and self.sms_access_key_secret)

    @property
    def smtp_on(self) -> bool:
        return bool(self.smtp_host)

    @property
    def webhook_seconds(self) -> float:
        return float(self.webhook_timeout)

    @property
    def concurrency(self) -> int:
        return int(self.send_concurrency)

    def route_map(self) -> dict[str, str]:
        """Channel -> transport from ORCH_ROUTES ('sms=webhook,email=console')."""
        from orchestrator.playbook import Channel

        out: dict[str, str] = {}
        channels = {c.value for c in Channel}
        for part in (self.routes or "").split(","):
            if not part.strip():
                continue
            channel, sep, transport = part.partition("=")
            channel, transport = channel.strip(), transport.strip()
            if not sep or channel not in channels or transport not in TRANSPORTS:
                raise ConfigError(
                    f"ORCH_ROUTES: '{part.strip()}' is not channel=transport; channels are {', '.join(sorted(channels))},"
                    f" transports {', '.join(TRANSPORTS)}"
                )
            out[channel] = transport
        return out

    def __repr__(self) -> str:
        return f"<Settings database={redact(self.database_url)} redis={redact(self.redis_url or 'embedded')} public_url={self.public_url}>"


def redact(url: str) -> str:
    """Hide a password inside a URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def _http_url(url: str) -> bool:
    """An http(s) URL with a host and a valid port, as the webhook's client needs."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _seconds(text: str) -> float | None:
    """A positive, finite number of seconds, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None
