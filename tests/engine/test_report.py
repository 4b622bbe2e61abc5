"""The close report: the whole funnel, KPIs against targets, per guide, per variant, per minute and
the draws, counted again from the store at close; and a page that still renders without them."""

from __future__ import annotations

import asyncio
import csv
import os
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from orchestrator import draws, eventlog, scheduling
from orchestrator.copytext import mask
from orchestrator.funnel import Funnel
from orchestrator.report import percent, write_report, yuan
from orchestrator.settings import Settings
from orchestrator.store import ScanLog
from tests.engine.conftest import arq_pool, running_worker, until
from tests.engine.test_draws import SECRET, comment, signed
from tests.engine.test_event_run import closed
from tests.engine.test_pool import codes_of, pool_event, quiet, schedule
from web.app import create_app

pytestmark = pytest.mark.db
SCANLOG = ScanLog.__table__  # type: ignore[attr-defined]
CST = timezone(timedelta(hours=8))
KPI = "  kpi: {reached: 3, scanned: 4, joined: 2, gmv_cny: 5000}\n"


def kpi_event(folder: Path) -> Path:
    """The pool event (guides g1 小李 and g2 小王, variants A and B, 3 members) with KPI targets."""
    path = pool_event(folder, groups=2)
    text = path.read_text(encoding="utf-8")
    assert "  statement: 测试引擎\n" in text
    path.write_text(text.replace("  statement: 测试引擎\n", "  statement: 测试引擎\n" + KPI), encoding="utf-8")
    return path


def section(html: str, anchor: str) -> str:
    """The page from the heading with id `anchor` to the next heading."""
    start = html.index(f'<h2 id="{anchor}">')
    end = html.find("<h2", start + 1)
    return html[start:end if end != -1 else len(html)]


def funnel_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:  # with BOM, like the sends CSV
        return list(csv.DictReader(fh))


def cells(*values: object) -> str:
    return "".join(f'<td class="n">{v}</td>' for v in values)


def test_money_and_percentages_are_integer_arithmetic() -> None:
    assert yuan(259900) == "¥2,599.00" and yuan(5) == "¥0.05" and yuan(-1050) == "-¥10.50" and yuan(0) == "¥0.00"
    assert percent(259900, 500000) == "52.0%" and percent(2, 3) == "66.7%" and percent(1, 8) == "12.5%" and percent(3, 4) == "75.0%"
    assert percent(1, 0) is None and percent(1, None) is None


def test_the_close_report_holds_the_whole_funnel_counted_again_from_the_store(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ORCH_ROUTES="sms=console,email=console", ORCH_API_TOKEN="tok", ORCH_INGEST_SECRET=SECRET, REDIS_URL=redis_url)
    path = kpi_event(tmp_path / "event")

    async def scheduled() -> str:  # the live is over on this clock: close is due as soon as a worker runs
        async with arq_pool(redis_url) as pool:
            return (await scheduling.schedule(engine, pool, settings, path, speed=600, clock_from=datetime(2027, 6, 10, 21, 8))).event_id

    event_id = asyncio.run(scheduled())
    codes = codes_of(engine, event_id)
    with TestClient(create_app(settings)) as client:
        for code, times in ((codes[("g1", "A")], 1), (codes[("g1", "A")], 2), (codes[("g2", "B")], 1)):  # 3 people, one scans twice
            client.cookies.clear()
            for _ in range(times):
                assert client.get(f"/s/{code}").status_code == 200
        for person, guide in (("m000001", "g1"), ("m000002", "g2"), ("m000001", "g1")):  # a join reported twice counts once
            r = client.post(f"/api/events/{event_id}/joins", json={"person": person, "group": 1, "guide": guide},
                            headers={"Authorization": "Bearer tok"})
            assert r.status_code == 200, r.text
        body, headers = signed({"comments": [comment(1, "u1", "加油", datetime(2027, 6, 10, 19, 30, tzinfo=CST)),
                                             comment(2, "u2", "主播好", datetime(2027, 6, 10, 19, 31, tzinfo=CST))]})
        assert client.post(f"/api/events/{event_id}/comments", content=body, headers=headers).status_code == 200
        body, headers = signed({"payments": [{"payment_id": "p1", "kind": "order", "order_id": "o1", "person": "b1", "amount_fen": 259900,
                                              "time": "2027-06-10 20:05"}]})
        assert client.post(f"/api/events/{event_id}/payments", content=body, headers=headers).status_code == 200

    async def close_after_redis_forgot() -> None:
        redis = Redis.from_url(redis_url)
        try:
            await Funnel(redis).clear(event_id)  # the live counters are gone: close must count again from the store
        finally:
            await redis.aclose()
        async with running_worker(settings, redis_url, engine):
            await until(closed(engine, event_id), 90, "the event to close")

    asyncio.run(close_after_redis_forgot())

    reports = Path(settings.data_dir) / "reports"
    html = (reports / f"{event_id}-report.html").read_text(encoding="utf-8")
    closing = [e for e in eventlog.entries(engine, event_id, limit=500) if e["kind"] == "closed"]
    assert closing and closing[-1]["data"]["funnel_csv"] == str(reports / f"{event_id}-funnel.csv")
    assert 'id="no-live-figures"' not in html and "<script" not in html and 'src="http' not in html  # self-contained

    rows = funnel_csv(reports / f"{event_id}-funnel.csv")
    steps = {r["step"]: r for r in rows if r["section"] == "funnel"}
    assert list(steps) == ["reached", "scanned", "joined", "reminded", "entered", "commented", "deposited", "ordered"]
    assert {k: (steps[k]["count"], steps[k]["target"]) for k in ("reached", "scanned", "joined", "commented", "ordered")} == {
        "reached": ("3", "3"), "scanned": ("3", "4"), "joined": ("2", "2"), "commented": ("2", ""), "ordered": ("1", "")}
    assert (steps["joined"]["of_previous"], steps["joined"]["of_reached"], steps["scanned"]["of_reached"]) == ("0.6667", "0.6667", "1.0")
    assert steps["reminded"]["of_previous"] == "" and steps["reminded"]["of_reached"], "reminders go to the audience: no share of the joined"
    gmv = next(r for r in rows if r["section"] == "gmv")
    assert (gmv["gmv_fen"], gmv["target"]) == ("259900", "500000")
    guides = {r["id"]: r for r in rows if r["section"] == "guide"}
    assert {g: (r["name"], r["scanned"], r["joined"], r["gmv_fen"]) for g, r in guides.items()} == {
        "g1": ("小李", "2", "1", "0"), "g2": ("小王", "1", "1", "0")}
    variants = {r["id"]: r for r in rows if r["section"] == "variant"}
    assert {v: (r["name"], r["scanned"], r["enough"]) for v, r in variants.items()} == {"A": ("进群抽奖", "2", "no"), "B": ("满减", "1", "no")}

    funnel = section(html, "funnel")
    assert f'href="{event_id}-funnel.csv"' in funnel
    assert "扫码 scanned</td>" + cells(3, "100.0%", "100.0%", 4, "75.0%") + '<td><span class="missed">missed</span>' in funnel
    assert "进群 joined</td>" + cells(2, "66.7%", "66.7%", 2, "100.0%") + '<td><span class="met">met</span>' in funnel
    kpis = section(html, "kpis")
    assert "<td>GMV</td>" + cells("¥2,599.00", "¥5,000.00", "52.0%") + '<td><span class="missed">missed</span>' in kpis
    assert "<td>扫码 (scanned)</td>" + cells("3", "4", "75.0%") in kpis
    guide_rows = section(html, "per-guide")
    assert "<td>g1</td><td>小李</td>" + cells(2, 1, "50.0%", 0, 0, "¥0.00") in guide_rows
    assert "<td>g2</td><td>小王</td>" + cells(1, 1, "100.0%", 0, 0, "¥0.00") in guide_rows
    per_variant = section(html, "per-variant")
    assert "<td>A</td><td>进群抽奖</td>" + cells(2, 0, "0.0%") in per_variant
    assert "95% CI" in per_variant and "fewer than 1,000 scans in an arm" in per_variant  # joins carry no variant: 0 of 2 and 0 of 1

    chart = section(html, "per-minute")
    assert "<svg" in chart and '<rect class="scanned"' in chart and '<rect class="joined"' in chart
    assert "scanned (3)" in chart and "joined (2)" in chart
    with engine.connect() as conn:
        scanned_at = [at for (at,) in conn.execute(select(SCANLOG.c.at).where(SCANLOG.c.event_id == event_id))]
    assert len(scanned_at) == 4  # every scan is logged; people count once
    for at in scanned_at:  # labelled in the event's timezone (Asia/Shanghai), not in UTC
        utc = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
        assert utc.astimezone(CST).strftime("%Y-%m-%d %H:%M") in chart
        assert f">{utc.strftime('%H:%M')}<" not in chart

    drawn = section(html, "draws")
    commitment = draws.commitment_of(engine, event_id)
    assert commitment and commitment["commitment"] in drawn
    made = draws.summaries(engine, event_id)
    assert made and all(f"<td>{d['id']}</td><td>{d['state']}</td>" in drawn for d in made)
    assert mask("观众u1") in drawn or mask("观众u2") in drawn, "a winner, masked"
    assert "观众u1" not in drawn and "观众u2" not in drawn
    assert "Sends per step" in html  # the sends sections stay

    # an order credited to g1 comes in after the close: `orchestrator report` writes the report again with it
    with TestClient(create_app(settings)) as client:
        body, headers = signed({"payments": [{"payment_id": "p2", "kind": "order", "order_id": "o2", "person": "b2", "amount_fen": 100000,
                                              "guide": "g1", "time": "2027-06-10 21:30"}]})
        assert client.post(f"/api/events/{event_id}/payments", content=body, headers=headers).json() == {"stored": 1, "duplicates": 0}
    from click.testing import CliRunner

    from orchestrator.cli import cli

    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": str(settings.data_path)}
    done = CliRunner().invoke(cli, ["--lang", "en", "report", event_id], env=env)
    assert done.exit_code == 0 and f"{event_id}-report.html" in done.output, done.output
    rows = funnel_csv(reports / f"{event_id}-funnel.csv")
    assert next(r for r in rows if r["section"] == "gmv")["gmv_fen"] == "359900"
    assert next(r for r in rows if r["section"] == "guide" and r["id"] == "g1")["gmv_fen"] == "100000"
    assert "¥3,599.00" in (reports / f"{event_id}-report.html").read_text(encoding="utf-8")
    import subprocess
    import sys

    missing = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "--lang", "en", "report", "no-such-event"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no event 'no-such-event'" in missing.stderr and "Traceback" not in missing.stderr


def test_without_the_live_figures_the_report_renders_and_says_so(
        tmp_path: Path, engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    event_id = schedule(engine, quiet(make_settings), redis_url, kpi_event(tmp_path / "event"))
    html_path, sends_path, funnel_path = write_report(engine, event_id, tmp_path / "reports")
    assert (html_path.name, sends_path.name, funnel_path.name) == (f"{event_id}-report.html", f"{event_id}-sends.csv", f"{event_id}-funnel.csv")
    html = html_path.read_text(encoding="utf-8")
    assert 'id="no-live-figures"' in html and "were not available" in html
    assert "reached</td>" + cells(3, "", "100.0%", 3, "100.0%") in section(html, "funnel")
    assert 'id="per-guide"' not in html and 'id="per-minute"' not in html
    commitment = draws.commitment_of(engine, event_id)
    assert commitment and commitment["commitment"] in section(html, "draws")
    rows: list[dict[str, Any]] = funnel_csv(funnel_path)
    assert [(r["section"], r["step"], r["count"], r["target"]) for r in rows] == [("funnel", "reached", "3", "3"), ("funnel", "reminded", "0", "")]
    assert re.search(r"^\ufeff", funnel_path.read_text(encoding="utf-8"))
