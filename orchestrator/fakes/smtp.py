"""A real SMTP server on loopback (aiosmtpd on its own thread and event loop) for the e-mail channel.

It keeps every message it accepts (parsed), counts connections and login attempts, can require a
login (any other password is refused with 535), and answers given recipients with a temporary
(4xx) reply a number of times before accepting, or a permanent (5xx) reply always. The transport
under test talks to it unchanged: only the host and port differ from a real relay.
"""

from __future__ import annotations

import asyncio
import email
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default
from types import TracebackType
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    sender: str
    recipient: str
    message: EmailMessage
    raw: bytes
    at: float

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        return "" if part is None else str(part.get_content())

    @property
    def html(self) -> str:
        part = self.message.get_body(("html",))
        return "" if part is None else str(part.get_content())


@dataclass
class FakeSmtp:
    user: str | None = None  # with a password: MAIL needs a login, and only this one works
    password: str | None = None
    temporary: dict[str, int] = field(default_factory=dict)  # address -> 451 answers before it is accepted
    permanent: dict[str, str] = field(default_factory=dict)  # address -> the 5xx reply it always gets
    per_connection: int | None = None  # messages a connection may carry; the next MAIL gets 421 and the connection is closed
    vanish: set[str] = field(default_factory=set)  # addresses whose message is received, then the connection dropped unanswered
    keep: bool = True  # False: count only (a bench)
    messages: list[Received] = field(default_factory=list)
    rcpt_replies: Counter[tuple[str, int]] = field(default_factory=Counter)  # (address, code) -> times answered
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (user, accepted)
    sessions: int = 0  # EHLO/HELO greetings: one per connection (plus one after STARTTLS)
    accepted: int = 0
    vanished: int = 0
    first: float = 0.0
    last: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    # -- aiosmtpd hooks (its thread) -----------------------------------------------------------------

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        with self._lock:
            self.sessions += 1
        return responses

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        session.host_name = hostname
        with self._lock:
            self.sessions += 1
        return f"250 {server.hostname}"

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if self.password is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        carried = getattr(session, "carried", 0)
        if self.per_connection is not None and carried >= self.per_connection:
            transport = server.transport
            if transport is not None:
                asyncio.get_running_loop().call_soon(transport.close)  # after the reply is written
            return "421 4.7.0 Too many messages in this connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        key = address.lower()
        with self._lock:
            if key in self.permanent:
                reply = self.permanent[key]
            elif self.temporary.get(key, 0) > 0:
                self.temporary[key] -= 1
                reply = "451 4.3.0 Mailbox busy, try again later"
            else:
                reply = "250 OK"
            self.rcpt_replies[(key, int(reply[:3]))] += 1
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        now = time.time()
        session.carried = getattr(session, "carried", 0) + 1  # type: ignore[attr-defined]
        if any(rcpt.lower() in self.vanish for rcpt in envelope.rcpt_tos) and server.transport is not None:
            with self._lock:
                self.vanished += 1
            cast(asyncio.Transport, server.transport).abort()  # the message arrived, the answer never does
            return "250 2.0.0 Message accepted for delivery"
        parsed = email.message_from_bytes(raw, policy=default) if self.keep else None
        with self._lock:
            for rcpt in envelope.rcpt_tos:
                self.accepted += 1
                if not self.first:
                    self.first = now
                self.last = now
                if parsed is not None:
                    self.messages.append(Received(str(envelope.mail_from), rcpt, parsed, raw, now))
        return "250 2.0.0 Message accepted for delivery"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == self.user
              and auth_data.password.decode() == self.password)
        with self._lock:
            self.logins.append((auth_data.login.decode() if isinstance(auth_data, LoginPassword) else "?", ok))
        # a refusal must be handled=False (aiosmtpd then answers 535); handled=True would leave the client waiting
        return AuthResult(success=True) if ok else AuthResult(success=False, handled=False)

    # -- the test's side ---------------------------------------------------------------------------------

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [r for r in self.messages if r.recipient.lower() == address.lower()]

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def start(self) -> FakeSmtp:
        with socket.socket() as s:  # aiosmtpd cannot listen on port 0 (it connects to itself to check): pick a free port first
            s.bind((self.host, 0))
            self.port = s.getsockname()[1]
        auth: dict[str, Any] = {"authenticator": self.authenticate, "auth_require_tls": False} if self.password is not None else {}
        self._controller = Controller(self, hostname=self.host, port=self.port, server_hostname="fake-smtp.test", **auth)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> FakeSmtp:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def settings(self) -> dict[str, str]:
        """The environment that points the e-mail channel at this server."""
        env = {"ORCH_SMTP_HOST": self.host, "ORCH_SMTP_PORT": str(self.port), "ORCH_SMTP_TLS": "off"}
        if self.user is not None:
            env["ORCH_SMTP_USER"] = self.user
        return env


def main() -> None:
    """`python -m orchestrator.fakes.smtp`: serve on a free port (printed first), counting only (the bench's peer).

    Each line read on stdin is a command answered with one JSON line: `stats` (accepted, sessions,
    first, last) or `reset`; end of input stops the server.
    """
    import json
    import sys

    with FakeSmtp(keep=False) as fake:
        print(fake.port, flush=True)
        for line in sys.stdin:
            with fake._lock:
                if line.strip() == "reset":
                    fake.accepted, fake.sessions, fake.first, fake.last = 0, 0, 0.0, 0.0
                    fake.rcpt_replies.clear()
                print(json.dumps({"accepted": fake.accepted, "sessions": fake.sessions, "first": fake.first, "last": fake.last}), flush=True)


if __name__ == "__main__":
    main()
