"""The e-mail channel over SMTP (aiosmtplib): one multipart message per person, through pooled connections.

Each message is multipart/alternative (text/plain, then text/html: the playbook's html copy, or
the text as escaped paragraphs), From ORCH_MAIL_FROM, To the member's name and address (RFC 2047
encoded when not ASCII), a Message-ID and Date, and RFC 8058 one-click unsubscribe:

    List-Unsubscribe: <ORCH_PUBLIC_URL/u/<token>>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

with the same link in the footer of both parts (`orchestrator.unsubscribe` signs the token).

Connections are kept open and reused, at most `concurrency` of them, each carrying one message
at a time (`send_pooled` slots); one the server has closed is replaced. Until a connection has
been opened (and logged in) successfully, connections are opened one at a time, so a wrong
password or a server that is down costs one attempt, not one per message.

The message is a stdlib `EmailMessage` whose headers this module encodes itself (RFC 2047 for
names and subjects) and whose two parts are UTF-8, base64 unless plain ASCII: the stdlib's header
parsing and refolding cost most of a message and break long List-Unsubscribe URLs (`_Policy`).

Outcomes: 2xx sent (provider id: the Message-ID); 4xx replies, connection errors and timeouts
before the message went out are temporary (`retry`); 5xx replies are permanent (`failed`, with the
server's reply); a malformed address fails without talking to the server. A connection lost after
the message went out and before the server's answer is `failed` as an unknown outcome: it may have
been delivered. A 421 or a closed connection before the message went out is tried once more at
once on a new connection. A refused login (535) or a server lacking what the settings ask for
(STARTTLS, AUTH) is a configuration error: logged once, and every message fails at once without
another connection until the worker restarts with fixed settings.

SMTP has no idempotency key: `idempotent` is False, so a message whose outcome a crash hid is
marked `unknown` in the ledger and never sent twice.
"""

from __future__ import annotations

import asyncio
import base64
import html as htmlib
import logging
import re
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.header import Header
from email.message import EmailMessage, MIMEPart
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any, Literal

import aiosmtplib

from orchestrator import unsubscribe
from orchestrator.channels.base import Outcome, Outgoing, Slots, send_pooled
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings

log = logging.getLogger(__name__)

# RFC 5321/5322 dot-atom local part and an LDH domain with at least one dot; 254 characters at most
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ADDRESS = re.compile(rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})+")
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_SPECIALS = frozenset('()<>[]:;@\\,"')
_URL = re.compile(r"https?://[^\s<>\"']+")
LOGIN_REFUSED = "configuration: the SMTP server refused the login; check ORCH_SMTP_USER / ORCH_SMTP_PASSWORD"
DOWN_FOR = 2.0  # seconds after a failed connection during which messages are not tried (answered `retry`)


def valid_address(address: str) -> bool:
    """A plain address (no name, no angle brackets) we can put in RCPT TO; internationalized ones (SMTPUTF8) included."""
    if not address or len(address) > 254 or any(c.isspace() for c in address):
        return False
    if address.isascii():
        return ADDRESS.fullmatch(address) is not None
    local, at, domain = address.rpartition("@")
    if not at or not local or local[0] == "." or local[-1] == "." or ".." in local or any(c in _SPECIALS for c in local + domain):
        return False
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return _DOMAIN.fullmatch(ascii_domain) is not None


class _Policy(EmailPolicy):
    """policy.SMTP, except that the headers this module encodes itself are kept and written as given.

    The stdlib would RFC 2047-encode a long List-Unsubscribe URL (breaking it), and parsing and
    refolding every header it is given was most of the cost of a message; ours are encoded (RFC 2047)
    and folded here, and are ASCII unless the address itself is not (SMTPUTF8).
    """

    RAW = frozenset({"subject", "from", "to", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post", "mime-version",
                     "content-type", "content-transfer-encoding"})

    def header_max_count(self, name: str) -> int | None:
        if name.lower() in self.RAW:  # each once (the stdlib would build a header class per call to say so)
            return 1
        return super().header_max_count(name)

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if name.lower() in self.RAW and isinstance(value, str):
            return name, value
        return super().header_store_parse(name, value)

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if name.lower() in self.RAW and not hasattr(value, "name"):
            return value
        return super().header_fetch_parse(name, value)

    def fold(self, name: str, value: str) -> str:
        if name.lower() in self.RAW and not hasattr(value, "name"):
            return f"{name}: {self._lines(value)}{self.linesep}"
        return super().fold(name, value)  # type: ignore[no-any-return]

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in self.RAW and not hasattr(value, "name"):
            return self.fold(name, value).encode("utf-8" if self.utf8 else "ascii")
        return super().fold_binary(name, value)

    def _lines(self, value: str) -> str:
        return value.replace("\r\n", "\n").replace("\n", self.linesep)


POLICY = _Policy(linesep="\r\n", cte_type="7bit")


def _header(text: str) -> str:
    """An unstructured header value: one line, RFC 2047 encoded (and folded) when not ASCII."""
    text = " ".join(text.split())
    if text.isascii():
        return Header(text, "us-ascii", header_name="Subject").encode()
    return Header(text, "utf-8", header_name="Subject").encode()


def _mailbox(name: str, address: str) -> str:
    """`name <address>`: the name RFC 2047 encoded when not ASCII, quoted when it has specials."""
    name = " ".join(name.split())
    if not name:
        return address
    if not name.isascii():
        shown = Header(name, "utf-8").encode()
    elif any(c in _SPECIALS or c == "." for c in name):
        shown = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        shown = name
    return f"{shown} <{address}>"


def _part(content_type: str, body: str) -> MIMEPart:
    """One UTF-8 text part: 7bit when it is ASCII in short lines, else base64 (CJK text is shorter so than quoted-printable)."""
    body = body.replace("\r\n", "\n")
    part = MIMEPart(policy=POLICY)
    part["Content-Type"] = f'{content_type}; charset="utf-8"'
    if body.isascii() and all(len(line) <= 900 for line in body.split("\n")):
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(body)
    else:
        part["Content-Transfer-Encoding"] = "base64"
        part.set_payload(base64.encodebytes(body.replace("\n", "\r\n").encode()).decode("ascii"))  # text's canonical form: CRLF lines
    return part


def text_to_html(text: str, title: str) -> str:
    """The text as escaped paragraphs (links made clickable) in a small mobile-friendly document."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    body = "\n".join("<p>" + _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', htmlib.escape(p, quote=False)).replace("\n", "<br>\n") + "</p>"
                     for p in paragraphs)
    return ('<!doctype html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{htmlib.escape(title)}</title></head>\n"
            '<body style="margin:0;padding:16px;font-family:-apple-system,\'PingFang SC\',\'Microsoft YaHei\',sans-serif;'
            f'font-size:16px;line-height:1.6;color:#2b2118">\n{body}\n</body></html>\n')


def _with_footer(document: str, footer: str) -> str:
    at = document.lower().rfind("</body>")
    return document + footer if at < 0 else document[:at] + footer + document[at:]


@dataclass
class _Pool:
    """Connections and slots of one event loop (a transport may outlive a loop: tests, the CLI)."""

    loop: asyncio.AbstractEventLoop
    slots: Slots
    idle: list[aiosmtplib.SMTP] = field(default_factory=list)
    probe: asyncio.Lock = field(default_factory=asyncio.Lock)
    verified: bool = False  # a connection has been opened and logged in: others may be opened in parallel
    down_until: float = 0.0
    down_error: str = ""


class _Configuration(Exception):
    """The settings are wrong: no message can be sent until they are fixed."""


class _Unreachable(Exception):
    """No connection now (refused, timed out, 4xx greeting): try the message later."""


class SmtpTransport:
    name = "smtp"
    idempotent = False  # SMTP has no idempotency key: a send of unknown outcome is never repeated

    def __init__(self, host: str, port: int, mail_from: str, link_secret: str, public_url: str, *,
                 user: str | None = None, password: str | None = None, tls: Literal["starttls", "tls", "off"] = "starttls",
                 concurrency: int = 50, timeout: float = 30.0, tls_context: ssl.SSLContext | None = None) -> None:
        name, sender = parseaddr(mail_from)
        if not valid_address(sender) or not sender.isascii():
            raise ConfigError(f"ORCH_MAIL_FROM has value {mail_from!r}; use an address, e.g. '品牌 <live@brand.example>'")
        self.host = host
        self.port = port
        self.sender = sender
        self.sender_name = name or sender
        self.domain = sender.rpartition("@")[2]
        self.from_header = _mailbox(name, sender)
        self.link_secret = link_secret
        self.public_url = public_url
        self.user = user
        self.password = password
        self.tls = tls
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.tls_context = tls_context
        self._config_error: str | None = None
        self._local_hostname: str | None = None
        self._pool_: _Pool | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTransport:
        if not settings.smtp_host:
            raise ConfigError("ORCH_SMTP_HOST is not set; the email channel is off")
        if not settings.mail_from or not settings.link_secret:
            raise ConfigError("ORCH_SMTP_HOST is set but ORCH_MAIL_FROM and ORCH_LINK_SECRET are not both set;"
                              " every e-mail carries a From address and a signed one-click unsubscribe link")
        tls: Literal["starttls", "tls", "off"] = "tls" if settings.smtp_tls == "tls" else "off" if settings.smtp_tls == "off" else "starttls"
        return cls(settings.smtp_host, int(settings.smtp_port), settings.mail_from, settings.link_secret, settings.public_url,
                   user=settings.smtp_user, password=settings.smtp_password, tls=tls, concurrency=settings.concurrency)

    # -- the message -------------------------------------------------------------------------------

    def unsubscribe_url(self, m: Outgoing, address: str) -> str:
        return unsubscribe.url(self.public_url, unsubscribe.link_token(self.link_secret, m.member_id, address.lower(), m.channel))

    def build(self, m: Outgoing, address: str) -> tuple[EmailMessage, str]:
        """The message to `address` and its Message-ID."""
        link = self.unsubscribe_url(m, address)
        subject = m.subject or (m.text.strip().splitlines() or [""])[0][:60]
        msg = EmailMessage(policy=POLICY)
        msg["Subject"] = _header(subject)
        msg["From"] = self.from_header
        msg["To"] = _mailbox(m.name, address)
        msg["Date"] = formatdate(usegmt=True)
        message_id = make_msgid(domain=self.domain)
        msg["Message-ID"] = message_id
        msg["List-Unsubscribe"] = f"<{link}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        text = f"{m.text.rstrip()}\n\n--\n{self.sender_name}\n退订 / unsubscribe: {link}\n"
        footer = (f'\n<p style="margin-top:24px;color:#8c8178;font-size:12px">{htmlib.escape(self.sender_name)} · '
                  f'<a href="{htmlib.escape(link)}" style="color:#8c8178">退订 / unsubscribe</a></p>\n')
        document = _with_footer(m.html if m.html is not None else text_to_html(m.text, subject), footer)
        msg["MIME-Version"] = "1.0"
        msg["Content-Type"] = f'multipart/alternative; boundary="=_{uuid.uuid4().hex}"'  # never inside base64 or our 7bit text
        msg.set_payload([_part("text/plain", text), _part("text/html", document)])
        return msg, message_id

    # -- sending -----------------------------------------------------------------------------------

    async def send(self, message: Outgoing) -> Outcome:
        if self._config_error is not None:
            return Outcome("failed", error=self._config_error)
        address = (message.address.get("email") or "").strip()
        if not valid_address(address):
            return Outcome("failed", error=f"malformed e-mail address {address!r}")
        try:
            msg, message_id = self.build(message, address)
            utf8 = not address.isascii()
            raw = msg.as_bytes(policy=POLICY.clone(utf8=True) if utf8 else POLICY)
        except Exception as e:  # a header the stdlib refuses: this message can never be built
            return Outcome("failed", error=f"could not build the message: {type(e).__name__}: {e}"[:500])
        pool = self._pool()
        for attempt in (0, 1):
            try:
                client, reused = await self._take(pool)
            except _Configuration as e:
                return Outcome("failed", error=str(e))
            except _Unreachable as e:
                return Outcome("retry", error=str(e), retry_after=DOWN_FOR)
            keep = False
            taking = False  # the message is going out: from here a lost connection leaves its fate unknown
            try:
                options = [f"SIZE={len(raw)}"] if client.supports_extension("size") else []
                if utf8:
                    if not client.supports_extension("smtputf8"):
                        keep = True
                        return Outcome("failed", error="the SMTP server does not take internationalized addresses (no SMTPUTF8)")
                    options.append("SMTPUTF8")
                await client.mail(self.sender, options=options)
                await client.rcpt(address, encoding="utf-8" if utf8 else "ascii")
                taking = True
                await client.data(raw)
                keep = True
                return Outcome("sent", provider_id=message_id[:128])
            except aiosmtplib.SMTPResponseException as e:  # MAIL, RCPT or DATA refused: the envelope is reset for the next message
                if e.code == 421 and not taking and attempt == 0:
                    continue  # the server is closing this connection (too many messages on it, say): once more on a fresh one
                keep = e.code != 421 and await _reset(client)
                return _by_code(e.code, e.message)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as e:  # the connection failed or timed out
                if taking:
                    return Outcome("unknown", error=f"outcome unknown: the connection failed while the server was taking the message"
                                                   f" ({type(e).__name__}: {e}); it may have been delivered, and SMTP has no"
                                                   f" idempotency key, so it is not sent again"[:500])
                if reused and attempt == 0:
                    continue  # the server had closed a connection we kept: once more on a fresh one
                return Outcome("retry", error=f"{type(e).__name__}: {e}"[:300])
            finally:
                await self._give(pool, client, keep)
        return Outcome("retry", error="SMTP connection lost twice")  # pragma: no cover (the loop returns)

    async def send_batch(self, messages: Sequence[Outgoing]) -> list[Outcome]:
        """At most `concurrency` messages in flight (one per connection) across every batch sent at once."""
        return await send_pooled(self, messages, self._pool().slots)

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        if self._pool_ is None or self._pool_.loop is not loop:
            if self._pool_ is not None:
                for client in self._pool_.idle:  # their loop is gone or elsewhere: drop them
                    client.close()
            self._pool_ = _Pool(loop, Slots(self.concurrency, loop))
        return self._pool_

    async def _take(self, pool: _Pool) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected client: an idle one (reused), or a new one."""
        while True:
            while pool.idle:
                client = pool.idle.pop()
                if client.is_connected:
                    return client, True
                client.close()  # the server closed it while it waited
            if pool.verified:
                return await self._open(pool), False
            async with pool.probe:  # until one connection has worked, open them one at a time
                if not pool.verified and not pool.idle:
                    return await self._open(pool), False
            # another sender's connection worked meanwhile: take an idle one, or open in parallel

    async def _give(self, pool: _Pool, client: aiosmtplib.SMTP, keep: bool) -> None:
        if keep and client.is_connected and len(pool.idle) < self.concurrency and pool is self._pool_:
            pool.idle.append(client)
        else:
            await _quit(client)

    async def _open(self, pool: _Pool) -> aiosmtplib.SMTP:
        if self._config_error is not None:
            raise _Configuration(self._config_error)
        if time.monotonic() < pool.down_until:
            raise _Unreachable(pool.down_error)
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)  # EHLO name, looked up once, off the loop
        client = aiosmtplib.SMTP(hostname=self.host, port=self.port, username=self.user or None, password=self.password if self.user else None,
                                 use_tls=self.tls == "tls", start_tls=self.tls == "starttls", timeout=self.timeout,
                                 local_hostname=self._local_hostname, tls_context=self.tls_context)
        try:
            try:
                await client.connect()  # greets, and with the settings' TLS and login does STARTTLS and AUTH
                if client.is_ehlo_or_helo_needed:  # the extensions (SIZE, SMTPUTF8) are known before the first message
                    try:
                        await client.ehlo()
                    except aiosmtplib.SMTPHeloError:
                        await client.helo()
            except BaseException:
                client.close()
                raise
        except aiosmtplib.SMTPAuthenticationError as e:
            if 500 <= e.code < 600:
                raise self._misconfigured(f"{LOGIN_REFUSED} (server: {e.code} {e.message})"[:500]) from e
            raise self._down(pool, f"SMTP login: {e.code} {e.message}") from e
        except ssl.SSLCertVerificationError as e:
            raise self._misconfigured(f"configuration: the SMTP server's TLS certificate is not trusted ({e.verify_message});"
                                      f" check ORCH_SMTP_HOST and ORCH_SMTP_TLS") from e
        except aiosmtplib.SMTPConnectResponseError as e:
            raise self._down(pool, f"SMTP server {self.host}:{self.port} answered {e.code} {e.message}") from e
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected,
                aiosmtplib.SMTPResponseException, OSError, asyncio.TimeoutError) as e:
            raise self._down(pool, f"cannot reach the SMTP server {self.host}:{self.port}: {type(e).__name__}: {e}") from e
        except aiosmtplib.SMTPException as e:  # STARTTLS or AUTH asked for but not offered, and the like
            raise self._misconfigured(f"configuration: the SMTP server {self.host}:{self.port} cannot do what the settings ask"
                                      f" ({e}); check ORCH_SMTP_TLS, ORCH_SMTP_PORT and ORCH_SMTP_USER") from e
        pool.verified = True
        return client

    def _misconfigured(self, error: str) -> _Configuration:
        if self._config_error is None:
            self._config_error = error
            log.error("e-mail channel stopped: %s; every e-mail fails until the settings are fixed and the worker restarted", error)
        return _Configuration(self._config_error)

    def _down(self, pool: _Pool, error: str) -> _Unreachable:
        pool.verified = False  # connect one at a time again until one works
        pool.down_until = time.monotonic() + DOWN_FOR
        pool.down_error = error[:300]
        return _Unreachable(pool.down_error)

    async def close(self) -> None:
        pool, self._pool_ = self._pool_, None
        if pool is None:
            return
        same_loop = asyncio.get_running_loop() is pool.loop
        for client in pool.idle:
            if same_loop:
                await _quit(client)
            else:
                client.close()
        pool.idle.clear()


async def _quit(client: aiosmtplib.SMTP) -> None:
    """Say QUIT when the connection is up (5 s at most), else just close it."""
    if client.is_connected:
        try:
            await asyncio.wait_for(client.quit(), 5)
            return
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            pass
    client.close()


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """RSET after a refusal, so the connection can carry the next message; False if it cannot."""
    if not client.is_connected:
        return False
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
        return False
    return True


def _by_code(code: int, reply: str) -> Outcome:
    reason = f"SMTP {code}: {reply}"[:500]
    if 400 <= code < 500:
        return Outcome("retry", error=reason)
    return Outcome("failed", error=reason)
