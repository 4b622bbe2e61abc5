"""The OpenAPI description is true: it names exactly the API's routes, and its examples work."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from orchestrator.settings import Settings
from tests.engine.test_draws import SECRET, signed
from tests.engine.test_pool import pool_event, schedule
from web.app import create_app

pytestmark = pytest.mark.db


def test_the_description_names_every_api_route_and_its_examples_are_accepted(
        tmp_path: Path, engine: object, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_INGEST_SECRET=SECRET, ORCH_API_TOKEN="tok", REDIS_URL=redis_url,
                             ORCH_SMS_INBOUND_KEY="inkey")
    event_id = schedule(engine, settings, redis_url, pool_event(tmp_path / "event", groups=1))  # type: ignore[arg-type]
    app = create_app(settings)
    with TestClient(app) as api:
        spec = api.get("/openapi.json").json()
        routes = {r.path: {m.lower() for m in (r.methods or set())} - {"head"} for r in app.routes
                  if isinstance(r, Route) and r.path.startswith(("/api/", "/ingest/", "/wecom/", "/inbound/"))}
        described = {path: set(ops) for path, ops in spec["paths"].items()}
        assert described == routes, "the description and the routes differ"
        for path, ops in spec["paths"].items():
            post = ops.get("post", {})
            example = post.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
            if example is None:
                continue
            url = path.replace("{event}", event_id).replace("{key}", "inkey")
            if post.get("security") == [{"signature": []}]:
                body, headers = signed(example)
                r = api.post(url, content=body, headers=headers)
                assert r.status_code == 200 and r.json() == {"stored": 1, "duplicates": 0}, (path, r.json())
            else:
                r = api.post(url, content=json.dumps(example).encode(), headers={"Authorization": "Bearer tok", "Content-Type": "application/json"})
                assert r.status_code == 200, (path, r.text)

        for resource, item, at in [("payments", {"payment_id": "p9", "kind": "order", "order_id": "o9", "person": "u", "amount_fen": -100,
                                                  "time": "2027-06-10 20:00"}, "body.amount_fen"),
                                   ("visits", {"visit_id": "v9", "kind": "leave", "person": "u", "time": "2027-06-10 20:00"}, "body.kind")]:
            body, headers = signed(item)
            r = api.post(f"/api/events/{event_id}/{resource}", content=body, headers=headers)
            assert r.status_code == 422 and r.json()["at"] == at, r.json()
