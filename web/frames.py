"""Websockets that take a ready frame: the board encodes a message once and writes it to every viewer.

uvicorn's `websockets-sansio` protocol frames every message it is given through the websockets
library's sans-I/O core, once per connection. A board snapshot goes to every viewer of an event,
so that framing was done a thousand times over for the same bytes (with the ASGI send around it,
most of the web process's time in bench/board.py besides the socket writes themselves). This
protocol, served by `orchestrator web` (orchestrator/webserver.py), adds the ASGI scope extension
`orchestrator.frames`: `write(frame)` writes a frame serialized once (`text_frame`) straight to the
connection, or returns False and writes nothing when the connection is not open or its buffer is
full, and the caller then sends through ASGI as usual (and waits, as a slow viewer must).
An app served by any other server sees no such extension and always sends through ASGI.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

EXTENSION = "orchestrator.frames"


def text_frame(text: str) -> bytes:
    """A whole, unmasked text frame (server to client) of `text`."""
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


class FramesProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][EXTENSION] = {"write": self.write_frame}

    def write_frame(self, frame: bytes) -> bool:
        """Write `frame` now; False, with nothing written, unless the connection is open, accepted,
        not closing, without extensions (a frame serialized once cannot be compressed per
        connection) and its write buffer below the high-water mark."""
        if (not self.handshake_complete or self.close_sent or self.disconnected or self.conn.state is not State.OPEN
                or self.conn.extensions or not self.writable.is_set() or self.transport.is_closing()):
            return False
        self.transport.write(frame)
        return True
