"""`create_app(settings)`: the one place the Starlette application is assembled."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from orchestrator.settings import Settings


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process is up and serving."""
    return JSONResponse({"ok": True, "version": request.app.state.version})


def create_app(settings: Settings) -> Starlette:
    """Build the app; routes for scans, ingestion and the board join this list in later work."""
    from importlib.metadata import version

    app = Starlette(routes=[Route("/healthz", healthz)])
    app.state.settings = settings
    app.state.version = version("live-orchestrator")
    return app
