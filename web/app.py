"""`create_app(settings)`: the one place the Starlette application is assembled.

Every web process opens its own store engine and Redis client in the lifespan; nothing the
processes share lives in process memory (the scan-code cache only remembers store rows for a few
seconds). The store must be migrated before (`orchestrator web` does it once, before its workers).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from collections.abc import AsyncIterator
from typing import cast

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ExceptionHandler

from orchestrator.autopipeline import AutoPipeline
from orchestrator.embedded_redis import redis_url
from orchestrator.instream import InStream
from orchestrator.pool import Pool
from orchestrator.scans import Resolver
from orchestrator.settings import Settings
from orchestrator.steadygc import steady_gc
from orchestrator.store import make_engine
from orchestrator.wecom import WeComClient
from orchestrator.wecom_crypto import WeComCrypto
from web.api import post_group, post_joins, post_optouts
from web.board import Hub, board_page, board_socket
from web.ingestapi import Events, post_comments, post_douyin, post_payments, post_visits, post_wxlivespy
from web.inbound import sms_replies, sms_reports
from web.metrics import metrics
from web.noticepage import notice
from web.openapi import openapi
from web.pages import Rendered
from web.posterpages import poster_image, poster_page
from web.scan import group_image, scan
from web.unreachable import redis_unreachable
from web.unsubscribe import unsubscribe_link
from web.wecom import callback as wecom_callback

async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process is up and serving."""
    return JSONResponse({"ok": True, "version": request.app.state.version})


def create_app(settings: Settings) -> Starlette:
    """Build the app: health, the scan route, group QR images, posters; ingestion and the board join later."""
    from importlib.metadata import version

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        with redis_url(settings.redis_url, settings.data_path) as url:
            redis = Redis.from_url(url)
            app.state.engine = engine
            app.state.redis = redis
            pipe = AutoPipeline(redis)  # the hot routes' scripts (scans, ingestion), written together on one connection
            app.state.pool = Pool(redis, engine, pipe)
            app.state.resolve = Resolver(engine)
            app.state.pages = Rendered()
            app.state.instream = InStream(redis, pipe)
            app.state.events = Events(engine)
            app.state.hub = Hub(redis)
            async with contextlib.AsyncExitStack() as stack:
                if settings.wecom_callbacks_on:
                    app.state.wecom_crypto = WeComCrypto(str(settings.wecom_token), str(settings.wecom_aes_key), str(settings.wecom_corp_id))
                if settings.wecom_api_on:
                    session = await stack.enter_async_context(aiohttp.ClientSession())
                    app.state.wecom = WeComClient(session, redis, str(settings.wecom_corp_id), str(settings.wecom_secret),
                                                  base_url=settings.wecom_api)
                try:
                    yield
                finally:
                    await app.state.hub.close()
                    await pipe.aclose()
                    await redis.aclose()
                    engine.dispose()

    app = Starlette(routes=[
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route("/s/{code}", scan),
        Route("/g/{event}/{number:int}", group_image),
        Route("/p/{code}.png", poster_image),
        Route("/posters/{event}/{key}", poster_page),
        Route("/notice/{event}", notice),
        Route("/u/{token}", unsubscribe_link, methods=["GET", "POST"]),
        Route("/board/{event}", board_page),
        WebSocketRoute("/board/{event}/ws", board_socket),
        Mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static"),
        Route("/api/events/{event}/joins", post_joins, methods=["POST"]),
        Route("/api/optouts", post_optouts, methods=["POST"]),
        Route("/inbound/sms/{key}", sms_replies, methods=["POST"]),
        Route("/inbound/sms-report/{key}", sms_reports, methods=["POST"]),
        Route("/api/events/{event}/groups", post_group, methods=["POST"]),
        Route("/api/events/{event}/comments", post_comments, methods=["POST"]),
        Route("/api/events/{event}/payments", post_payments, methods=["POST"]),
        Route("/api/events/{event}/visits", post_visits, methods=["POST"]),
        Route("/ingest/douyin/{event}", post_douyin, methods=["POST"]),
        Route("/ingest/wxlivespy/{event}/{key}", post_wxlivespy, methods=["POST"]),
        Route("/wecom/callback", wecom_callback, methods=["GET", "POST"]),
    ], lifespan=lifespan, exception_handlers={e: cast(ExceptionHandler, redis_unreachable) for e in (RedisConnectionError, RedisTimeoutError)})
    app.state.settings = settings
    app.state.version = version("live-orchestrator")
    return app


def app_from_env() -> Starlette:
    """The app with settings from the environment (uvicorn's factory in `orchestrator web`)."""
    app = create_app(Settings.from_env())
    steady_gc()  # a process of its own: what exists now lives as long as it does
    return app
