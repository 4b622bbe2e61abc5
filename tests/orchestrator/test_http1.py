"""The webhook channel's HTTP/1.1 client against real peers on loopback: an aiohttp.web app, and
raw asyncio servers that answer in the ways real servers do (chunked, close-delimited, keep-alive
then gone, silent, malformed, TLS)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.channels.http1 import Http1Pool, HttpError
from orchestrator.fakes.serving import RunningApp
from tests.ports import refusing_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Peer:
    """A raw HTTP peer: counts connections (open now, most at once, all) and requests."""

    def __init__(self, handler: Callable[[Peer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.handler = handler
        self.open = self.most = self.connections = self.requests = 0
        self.server: asyncio.Server | None = None
        self.bodies: list[bytes] = []
        self.heads: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.open += 1
            self.connections += 1
            self.most = max(self.most, self.open)
            self.writers.append(writer)
            try:
                await self.handler(self, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.open -= 1
                writer.close()
        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook?x=1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()
        await asyncio.sleep(0)  # the closed transports let go of their sockets

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        body = await reader.readexactly(length)
        self.requests += 1
        self.heads.append(head)
        self.bodies.append(body)
        return body


async def keep_alive(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        body = await peer.read_request(reader)
        await asyncio.sleep(0.001)
        answer = b'{"echo":' + body + b"}"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Seen: %d\r\nContent-Length: %d\r\n\r\n%s"
                     % (peer.requests, len(answer), answer))
        await writer.drain()


def test_posts_reuse_keep_alive_connections_and_never_open_more_than_the_limit() -> None:
    async def main() -> None:
        peer = Peer(keep_alive)
        async with peer as url:
            pool = Http1Pool(url, limit=4)
            answers = await asyncio.gather(*(pool.post(json.dumps({"n": i}).encode(), {"Content-Type": "application/json"})
                                             for i in range(200)))
            await pool.close()
        assert [json.loads(a.body)["echo"]["n"] for a in answers] == list(range(200))
        assert all(a.status == 200 and a.headers["content-type"] == "application/json" for a in answers)
        assert peer.requests == 200
        assert peer.most <= 4 and peer.connections <= 4  # every post after the first four went on a kept connection
        head = peer.heads[0].decode()
        assert head.startswith("POST /hook?x=1 HTTP/1.1\r\n") and f"Host: 127.0.0.1:{url.split(':')[2].split('/')[0]}\r\n" in head
    asyncio.run(main())


def test_an_aiohttp_server_gets_the_exact_body_and_headers() -> None:
    seen: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((await request.read(), dict(request.headers)))
        return web.json_response({"id": "m-1"}, status=202, headers={"Retry-After": "7"})

    app = RunningApp(lambda a: a.router.add_post("/hook", hook))
    base = app.start()
    try:
        async def main() -> None:
            pool = Http1Pool(base + "/hook")
            body = "王伟，你好".encode()
            answer = await pool.post(body, {"Content-Type": "application/json", "Idempotency-Key": "ev:step:m1:webhook"})
            await pool.close()
            assert answer.status == 202 and json.loads(answer.body) == {"id": "m-1"} and answer.headers["retry-after"] == "7"
            assert seen[0][0] == body and seen[0][1]["Idempotency-Key"] == "ev:step:m1:webhook"
            assert seen[0][1]["Content-Length"] == str(len(body))
        asyncio.run(main())
    finally:
        app.stop()


def test_a_chunked_answer_is_joined_and_its_charset_read() -> None:
    async def chunked(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        part = "失败".encode("gbk")
        writer.write(b"HTTP/1.1 503 Busy\r\nContent-Type: text/plain; charset=gbk\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(part), part) + b"3\r\nabc\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with Peer(chunked) as url:
            pool = Http1Pool(url)
            answer = await pool.post(b"{}", {})
            await pool.close()
        assert answer.status == 503 and answer.body.decode(answer.charset()) == "失败abc"
    asyncio.run(main())


def test_an_answer_ended_by_closing_the_connection_is_complete() -> None:
    async def close_delimited(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"id\": 9}")
        await writer.drain()
        writer.close()

    async def main() -> None:
        peer = Peer(close_delimited)
        async with peer as url:
            pool = Http1Pool(url, limit=1)
            first = await pool.post(b"{}", {})
            second = await pool.post(b"{}", {})  # the closed connection is not reused
            await pool.close()
        assert first.body == second.body == b'{"id": 9}' and peer.connections == 2
    asyncio.run(main())


def test_a_kept_connection_the_peer_closed_meanwhile_is_replaced_without_an_error() -> None:
    async def one_then_gone(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # says keep-alive, then closes on the next request
        await writer.drain()
        await reader.read(1)
        writer.transport.abort()

    async def main() -> None:
        peer = Peer(one_then_gone)
        async with peer as url:
            pool = Http1Pool(url, limit=1)
            assert (await pool.post(b"1", {})).body == b"ok"
            assert (await pool.post(b"2", {})).body == b"ok"  # sent again on a fresh connection
            await pool.close()
        assert peer.bodies == [b"1", b"2"] and peer.connections == 2
    asyncio.run(main())


def test_after_a_peer_restart_a_post_goes_out_once_on_a_fresh_connection() -> None:
    async def main() -> None:
        peer = Peer(keep_alive)
        async with peer as url:
            pool = Http1Pool(url, limit=3)
            await asyncio.gather(*(pool.post(b"1", {}) for _ in range(3)))  # three kept connections
            assert len(pool._idle) == 3
            for writer in peer.writers:  # the peer restarts: every connection it had is gone (the client learns it on use)
                writer.transport.abort()
            answer = await pool.post(b"2", {})
            await pool.close()
        assert answer.status == 200 and peer.bodies.count(b"2") == 1 and peer.connections == 4
    asyncio.run(main())


@pytest.mark.parametrize(("answer", "error"), [
    (None, "no answer within 0.2 s"),
    (b"HTTP/1.1 2OO OK\r\n\r\n", "malformed answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, "answer larger than 1000 bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "the peer closed the connection"),
])
def test_an_answer_that_never_comes_or_is_broken_is_an_error(answer: bytes | None, error: str) -> None:
    async def bad(peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peer.read_request(reader)
        if answer is None:
            await reader.read()  # silent until the client gives up
            return
        writer.write(answer)
        await writer.drain()

    async def main() -> None:
        peer = Peer(bad)
        async with peer as url:
            pool = Http1Pool(url, timeout=0.2, max_answer=1000)
            with pytest.raises(HttpError, match=error):
                await pool.post(b"{}", {})
            await pool.close()
        assert peer.requests == 1  # none of these is sent twice
    asyncio.run(main())


def test_a_refused_connection_is_an_error_that_frees_its_place() -> None:
    async def main() -> None:
        port = await refusing_port()
        pool = Http1Pool(f"http://127.0.0.1:{port}/hook", limit=1)
        for _ in range(3):  # the failed connect does not keep the only place
            with pytest.raises(HttpError, match=f"cannot connect to 127.0.0.1:{port}"):
                await pool.post(b"{}", {})
    asyncio.run(main())


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async def main() -> None:
        peer = Peer(keep_alive)
        async with peer as url:
            pool = Http1Pool(url)
            with pytest.raises(ValueError, match="Idempotency-Key"):
                await pool.post(b"{}", {"Idempotency-Key": "ev:step:m1\r\nX-Evil: 1"})
        assert peer.connections == 0
    asyncio.run(main())


def test_not_an_http_url_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="not an http"):
            Http1Pool("ftp://example.com/hook")
    asyncio.run(main())


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def test_https_verifies_the_peer_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> None:
        peer = Peer(keep_alive)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await keep_alive(peer, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        url = f"https://localhost:{server.sockets[0].getsockname()[1]}/hook"
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = Http1Pool(url, ssl_context=trusting)
        answer = await pool.post(b'"hi"', {})
        await pool.close()
        assert answer.body == b'{"echo":"hi"}'
        with pytest.raises(HttpError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            await Http1Pool(url).post(b'"hi"', {})  # the system's CAs do not know this certificate
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
    asyncio.run(main())
