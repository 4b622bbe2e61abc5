"""HTML pages from `web/templates` (Jinja2, autoescaped)."""

from __future__ import annotations

import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)


class Rendered:
    """Pages rendered from the same context in the last `ttl` seconds, kept per process (a burst of
    scans of one poster shows the same page to everyone sent to the same group)."""

    def __init__(self, ttl: float = 5.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._pages: dict[Hashable, tuple[float, str]] = {}

    def get(self, key: Hashable, name: str, context: dict[str, Any]) -> str:
        now = time.monotonic()
        hit = self._pages.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        html = TEMPLATES.env.get_template(name).render(context)
        if len(self._pages) >= self.size:
            self._pages.clear()
        self._pages[key] = (now + self.ttl, html)
        return html
