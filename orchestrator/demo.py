"""`orchestrator demo`: a whole event rehearsed on one machine, shown as it happens.

Schedules a playbook (the spring example) as a rehearsal on an accelerated clock, runs a worker
in this process and the web app in another (posters, scans, join pages) on the embedded defaults,
and prints the event log stage by stage with a progress bar per fan-out, until the event closes
and its report is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from orchestrator import eventlog, ledger, scheduling
from orchestrator.settings import Settings
from orchestrator.webserver import command
from orchestrator.worker import make_worker, pool_for

KIND_STYLE = {"scheduled": "bold", "fanout": "cyan", "step-done": "green", "live_start": "bold green", "live_end": "bold green",
              "closed": "bold green", "step-missed": "red", "step-deferred": "yellow", "step-skipped": "yellow",
              "recovered": "yellow", "unknown": "bold yellow", "sop_cue": "dim", "staff_script": "dim"}


@dataclass(frozen=True)
class DemoResult:
    event_id: str
    report: Path | None
    console_log: Path
    seconds: float


def speed_for(first: datetime, last: datetime, seconds: float) -> float:
    """The clock speed that plays the span from `first` to `last` in about `seconds` real seconds."""
    return max(1.0, (last - first).total_seconds() / seconds)


class WebApp:
    """`orchestrator web`'s app in a process of its own, on the demo's store and Redis."""

    def __init__(self, settings: Settings, redis_url: str, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": redis_url, "ORCH_DATA_DIR": settings.data_dir,
               "ORCH_PUBLIC_URL": settings.public_url, "ORCH_INGEST_SECRET": settings.ingest_secret or "",
               "ORCH_API_TOKEN": settings.api_token or "", "ORCH_SMS_INBOUND_KEY": settings.sms_inbound_key or ""}
        self.proc = subprocess.Popen(command(port), env=env, stdout=subprocess.DEVNULL)

    async def ready(self, timeout: float = 20.0) -> bool:
        import aiohttp

        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return True
                await asyncio.sleep(0.2)  # the process is still binding its port: nothing to await but that
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def run_demo(settings: Settings, engine: Engine, redis_url: str, playbook: Path, *, seconds: float, console: Console,
                   web_port: int | None = 8000, speed: float | None = None, seed: int = 1) -> DemoResult:
    web = None
    if web_port:
        if not os.environ.get("ORCH_PUBLIC_URL"):  # posters' QR codes lead to this demo's own web app
            settings = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{web_port}")
        import secrets as _secrets  # the synthetic audience signs what it posts: the web app gets the same keys

        settings = dataclasses.replace(settings, ingest_secret=settings.ingest_secret or _secrets.token_hex(16),
                                       api_token=settings.api_token or _secrets.token_hex(16))
        web = WebApp(settings, redis_url, web_port)
        if await web.ready():
            console.print(f"web: [bold]{web.url}[/] (posters, scans and join pages of this event; it stops with the demo)")
        else:
            console.print(f"[yellow]the web app did not start on port {web_port} (in use? choose another with --port); "
                          f"the demo runs without it[/]")
            web.stop()
            web = None
    try:
        return await _run(settings, engine, redis_url, playbook, seconds=seconds, console=console, web=web, speed=speed, seed=seed)
    finally:
        if web is not None:
            web.stop()


async def _run(settings: Settings, engine: Engine, redis_url: str, playbook: Path, *, seconds: float, console: Console,
               web: WebApp | None = None, speed: float | None = None, seed: int = 1) -> DemoResult:
    from orchestrator.plan import plan
    from orchestrator.validate import check

    loaded, _diags = check(playbook)
    assert loaded is not None
    p = plan(loaded)
    speed = speed or speed_for(p.steps[0].at, p.steps[-1].at, seconds)
    event_id = f"{loaded.playbook.id}-demo-{datetime.now():%m%d%H%M%S}"[:64]
    tz = ZoneInfo(p.timezone)
    started = time.monotonic()
    worker = make_worker(settings, redis_url, engine=engine, handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    pool = await pool_for(redis_url)
    try:
        result = await scheduling.schedule(engine, pool, settings, playbook, event_id=event_id, speed=speed, rehearsal=True)
        console.print(f"[bold]{p.title}[/] → event [bold]{event_id}[/]: {result.steps} steps, {result.audience} people, "
                      f"clock ×{speed:,.0f} (an event day in {86400 / speed:.0f} s), channels → {_deliveries(settings)}")
        ev = scheduling.get_event(engine, event_id)
        console.print(f"host board: [bold]{settings.public_url.rstrip('/')}/board/{event_id}?t={ev.board_key}[/]")
        crowd = None
        if web is not None:  # a synthetic audience on the real endpoints, so the board and the draws have people
            from orchestrator.posters import codes_of
            from orchestrator.rehearsal import Audience, plan_actions

            actions = plan_actions(loaded, ev.live_start, codes_of(engine, event_id), seed)
            audience = Audience(web.url, event_id, scheduling.event_clock(ev), str(settings.ingest_secret), str(settings.api_token))
            stop = asyncio.Event()
            crowd = asyncio.create_task(audience.play(actions, stop))
            console.print(f"rehearsal audience: {sum(a.kind == 'scan' for a in actions):,} people scan, seed {seed}")
        await _follow(engine, event_id, tz, console)
        await _settle(engine, event_id, console)
        if crowd is not None:
            stop.set()
            done = await crowd
            console.print("rehearsal audience did: " + ", ".join(f"{n:,} {k}" for k, n in sorted(done.items()))
                          + (f"; failed: {dict(audience.failed)}" if audience.failed else ""))
    finally:
        await pool.aclose()
        await worker.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    closing = [e for e in eventlog.entries(engine, event_id) if e["kind"] == "closed"]
    report = Path(closing[-1]["data"]["html"]) if closing and closing[-1]["data"] else None
    return DemoResult(event_id, report, Path(settings.data_dir) / "console" / f"{event_id}.jsonl", time.monotonic() - started)


async def _settle(engine: Engine, event_id: str, console: Console, within: float = 60.0) -> None:
    """After the close, let the sends already in flight be recorded before the worker stops (on a fast
    clock, with the platforms' real rate limits, a fan-out can outlast the compressed event): a drain
    records them, or gives them back as skipped, within its job's time."""
    deadline = time.monotonic() + within
    told = False
    while time.monotonic() < deadline:
        flying = await asyncio.to_thread(ledger.in_flight, engine, event_id)
        if not flying:
            return
        if not told:
            console.print(f"waiting for {flying:,} sends in flight at the close to be recorded")
            told = True
        await asyncio.sleep(0.5)
    console.print("[yellow]some sends were still in flight when the demo stopped: `orchestrator status` shows them[/]")


def _deliveries(settings: Settings) -> str:
    """Where a rehearsal's channels go: the console, unless ORCH_ROUTES sends some elsewhere."""
    from orchestrator.channels.registry import routes

    table = routes(settings, "rehearsal")
    elsewhere = {c: t for c, t in sorted(table.items()) if t != "console"}
    return "console" + ("".join(f", {c} → {t}" for c, t in elsewhere.items()) if elsewhere else "")


async def _follow(engine: Engine, event_id: str, tz: ZoneInfo, console: Console) -> None:
    """Print the event log as it grows, with a bar per step that is sending, until the event closes."""
    last = 0
    bars: dict[str, TaskID] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        while True:
            entries: list[dict[str, Any]] = await asyncio.to_thread(eventlog.entries, engine, event_id, last)
            for e in entries:
                last = e["id"]
                when = e["event_time"].astimezone(tz).strftime("%m-%d %H:%M") if e["event_time"] else "     —     "
                style = KIND_STYLE.get(e["kind"], "")
                progress.console.print(Text.assemble((when, "dim"), "  ", (e["message"], style)))
            status = await asyncio.to_thread(scheduling.status, engine, event_id)
            for s in status["steps"]:
                sends = s["sends"]
                done = sum(n for state, n in sends.items() if state not in ("planned", "sending"))
                total = sum(sends.values())
                if total and (s["state"] == "sending" or s["id"] in bars):
                    if s["id"] not in bars:
                        bars[s["id"]] = progress.add_task(f"  {s['id']}", total=total)
                    progress.update(bars[s["id"]], completed=done, total=total)
            if status["state"] in ("closed", "cancelled"):
                return
            await asyncio.sleep(0.25)
