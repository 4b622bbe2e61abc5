"""Loopback ports for tests of clients meeting a peer that is not there."""

from __future__ import annotations

import asyncio


async def refusing_port() -> int:
    """A loopback port that was just listening and is now closed: connecting to it is refused."""
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
