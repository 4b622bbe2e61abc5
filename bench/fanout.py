"""How fast a webhook reminder fans out through the engine, against two baselines in the same run.

Per database and per size N, into one local receiver in its own process, answering 200 {"id": n};
every rate is N over the time from the first to the last request it sees. The receiver is, by
default, what PERFORMANCE.md's baseline posted into: a Starlette route served by one uvicorn process
(uvloop + httptools), as fast as a brand's own web app would be. `--receiver aiohttp` puts a bare
aiohttp.web handler there instead: it answers ~3x faster, so on two cores the sender's CPU decides
every rate, and the ratios say what the engine's own work per message costs against aiohttp's.
Every sender runs on uvloop's event loop, as `orchestrator worker` does.

  engine     the real path. The playbook is scheduled on an accelerated clock and a real arq worker
             (`make_worker`, run in a fresh process of this script) runs the reminder step:
             plan_sends, then `stages.LANES` drain lanes of claim -> opt-outs -> caps -> render ->
             signed WebhookTransport.send_batch -> finish. That process's peak RSS is
             the memory figure; "planning" is the step's start to the first request.
  bare       N aiohttp POSTs of one body of the same size with the same headers (signature,
             idempotency key), made once, CONCURRENCY in flight, no engine.
  ledger off the same fan-out with the ledger switched off: stages.LANES lanes take the audience in
             batches of fanout.BATCH and run the engine's own checks and sending on them
             (fanout.checked_batch: people, opt-outs, the counts toward caps read from the stored
             rows; fanout.deliver: caps in Redis, render, send, funnel), but no send row is planned,
             claimed or finished. Engine ÷ this is what the bookkeeping costs (target ≥ 0.8).
  no engine  rendering and WebhookTransport.send_batch alone, in the same lanes and batches: no
             store, no checks, no Redis. Printed for what it tells (the engine's whole cost on top
             of the channel); no target.

Prints the rates and the ratios PERFORMANCE.md sets targets for (figures here are noisy; the
ratios are what we compare), and where each variant's CPU went: per message, in microseconds of the
whole machine over the middle 80% of its requests, by process (the sender: the worker or this
script; the receiver; PostgreSQL's backends; Redis; anything else). On two cores shared by all of
them the rates say only how much each variant got done; these say which process a change made
cheaper or dearer (they move about as much from round to round, ±10%: compare medians). Every
size and variant runs once per round, `--rounds` rounds in turns; the ratios are those of each
figure's median, and each round's ratio is printed beside them. PostgreSQL's schema `public` is
dropped and made again before each run.

    python bench/fanout.py [--sizes 10000,100000] [--db sqlite|postgresql|both] [--pg-url URL] [--rounds 3]
                           [--receiver uvicorn|aiohttp] [--peer-latency MS]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import resource
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvloop
from aiohttp import web
from sqlalchemy import Engine, create_engine, make_url, select, text

from orchestrator.channels.base import Outgoing
from orchestrator.channels.registry import build_transports
from orchestrator.channels.webhook import payload, sign
from orchestrator.embedded_redis import redis_url
from orchestrator.fanout import BATCH, checked_batch, deliver, step_time
from orchestrator.ledger import Claimed, key_of
from orchestrator.limits import periods
from orchestrator.load import LoadedPlaybook
from orchestrator.playbook import Channel, Member
from orchestrator.render import step_renderer
from orchestrator.runtime import Runtime
from orchestrator.scheduling import STEP, get_event, loaded_event, schedule
from orchestrator.settings import Settings
from orchestrator.stages import LANES
from orchestrator.store import Event, make_engine, open_store
from orchestrator.steadygc import steady_gc
from orchestrator.worker import make_worker, pool_for, settle_process

CONCURRENCY = 50
SPEED = 60.0  # one real second is an event minute: the reminder (a minute after the poster) is due ~3 s after scheduling
STEP_ID = "reminder:go"
HERE = Path(__file__).resolve()
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英"
PLAYBOOK = """\
version: 1
id: fanout
title: 压测提醒
timezone: Asia/Shanghai
goal: {statement: 测量提醒的发送速度}
audience:
  expected_reach: REACH
  segments: [{id: all, name: 全部, file: members.csv}]
lever: {incentives: [{id: discount, name: 老客折扣, copy: 老客立减50元}]}
mechanism: {}
path:
  poster: {at: T-2d 10:00, guides: guides.csv, variants: [{id: A, hook: 进群抽奖}]}
  join: {kind: wecom_join_way, capacity: 500, margin: 480, group_name: '压测{n}群'}
  reminders:
    - id: go
      at: T-2d 10:01
      channels: [webhook]
      copy: '{{ member.name }}，{{ event.title }}{{ event.start_text }}开播：{{ event.room_url }}'
  live: {start: 2027-03-20 19:00, end: 2027-03-20 21:00, platform: douyin, room_url: 'https://live.example/room/1'}
policy:
  quiet_hours: off
  caps: {per_day: 100, per_month: 1000}
  late_steps: {action: run_late, tolerance: 30d}
"""


@dataclass
class Seen:
    """What the receiver has seen since its last reset (epoch seconds)."""

    count: int = 0
    first: float = 0.0
    last: float = 0.0

    @property
    def rate(self) -> float:
        return self.count / max(self.last - self.first, 1e-9)


ROLES = ("sender", "receiver", "postgres", "redis", "other")


class CpuSampler:
    """Every 0.2 s, in a thread of the receiver: the machine's busy CPU seconds (/proc/stat) and
    each role's (/proc/<pid>/stat, processes told apart by their command lines). Reading ~100
    processes' stat files takes 2-4 ms here: ~2% of a core, taken from the receiver in every
    variant alike."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float, dict[str, float]]] = deque(maxlen=3000)
        self._roles: dict[int, str] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        threading.Thread(target=self._run, daemon=True).start()

    def _role(self, pid: int) -> str:
        role = self._roles.get(pid)
        if role is None:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                return "other"
            role = ("receiver" if "--serve-receiver" in cmd else "sender" if HERE.name in cmd  # this script: the worker (--one) or the baselines
                    else "postgres" if cmd.startswith("postgres") else "redis" if "redis-server" in cmd else "other")
            self._roles[pid] = role
        return role

    def _run(self) -> None:
        while True:
            with open("/proc/stat", encoding="ascii") as fh:
                jiffies = [int(x) for x in fh.readline().split()[1:]]
            busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / self._tick  # all but idle and iowait
            roles = dict.fromkeys(ROLES, 0.0)
            for name in os.listdir("/proc"):
                if name.isdigit():
                    try:
                        with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as fh:
                            fields = fh.read().rsplit(")", 1)[1].split()
                    except OSError:  # gone meanwhile
                        continue
                    roles[self._role(int(name))] += (int(fields[11]) + int(fields[12])) / self._tick
            self.samples.append((time.time(), busy, roles))
            time.sleep(0.2)

    def per_message(self, stamps: list[float]) -> dict[str, float]:
        """Microseconds of CPU per message over the middle 80% of the requests seen at `stamps`:
        the machine's ("total", and "busy": the machine's load, 2.0 is both cores) and each role's."""
        trim = len(stamps) // 10
        if len(stamps) - 2 * trim < 100 or len(self.samples) < 2:
            return {}
        start, end = stamps[trim], stamps[-trim - 1]
        a = min(self.samples, key=lambda sample: abs(sample[0] - start))
        b = min(self.samples, key=lambda sample: abs(sample[0] - end))
        if b[0] <= a[0]:
            return {}
        n = (len(stamps) - 2 * trim) * (b[0] - a[0]) / max(end - start, 1e-9)  # the messages of the sampled window
        return {"total": (b[1] - a[1]) / n * 1e6, "busy": (b[1] - a[1]) / (b[0] - a[0]),
                **{role: (b[2][role] - a[2][role]) / n * 1e6 for role in ROLES}}


def receiver(latency: float, kind: str) -> None:
    """`--serve-receiver`: serve POST /hook, GET /stats and POST /reset on a free port, printed on stdout.

    `kind` uvicorn: a Starlette route in one uvicorn process (uvloop + httptools), the receiver of
    PERFORMANCE.md's baseline. aiohttp: a bare aiohttp.web handler, the fastest peer we know how to
    write in Python (it leaves the sender CPU-bound). With `latency` (seconds) each answer waits
    that long, like a peer across a network would."""
    seen = Seen()
    stamps: list[float] = []  # when each request of the current run came
    sampler = CpuSampler()

    def saw() -> int:
        now = time.time()
        stamps.append(now)
        if not seen.count:
            seen.first = now
        seen.count += 1
        seen.last = now
        return seen.count

    def reset() -> dict[str, object]:
        stamps.clear()
        seen.count, seen.first, seen.last = 0, 0.0, 0.0
        return asdict(seen)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    if kind == "uvicorn":
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def s_hook(request: Request) -> JSONResponse:
            await request.body()
            if latency:
                await asyncio.sleep(latency)
            return JSONResponse({"id": saw()})

        async def s_stats(_request: Request) -> JSONResponse:
            return JSONResponse(asdict(seen))

        async def s_reset(_request: Request) -> JSONResponse:
            return JSONResponse(reset())

        async def s_cpu(_request: Request) -> JSONResponse:
            return JSONResponse(sampler.per_message(stamps))

        app = Starlette(routes=[Route("/hook", s_hook, methods=["POST"]), Route("/stats", s_stats), Route("/reset", s_reset, methods=["POST"]),
                                Route("/cpu", s_cpu)])
        server = uvicorn.Server(uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="off", access_log=False, log_level="warning"))
        print(sock.getsockname()[1], flush=True)
        server.run(sockets=[sock])
        return

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        if latency:
            await asyncio.sleep(latency)
        return web.json_response({"id": saw()})

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(asdict(seen))

    async def do_reset(_request: web.Request) -> web.Response:
        return web.json_response(reset())

    async def cpu(_request: web.Request) -> web.Response:
        return web.json_response(sampler.per_message(stamps))

    async def serve() -> None:
        app = web.Application()
        app.add_routes([web.post("/hook", hook), web.get("/stats", stats), web.post("/reset", do_reset), web.get("/cpu", cpu)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        print(sock.getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


async def call(url: str, method: str = "GET") -> Seen:
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        return Seen(**await resp.json())


async def cpu_of(base: str) -> dict[str, float]:
    """What the receiver's sampler says the run since its last reset cost per message (CpuSampler)."""
    async with aiohttp.ClientSession() as session, session.get(base + "/cpu") as resp:
        return dict(await resp.json())


async def until_seen(base: str, n: int, label: str, stall: float = 120.0, quiet: bool = False) -> Seen:
    """Poll the receiver (a progress line on stderr) until it has seen `n` requests."""
    last_count, changed = -1, time.monotonic()
    while True:
        seen = await call(base + "/stats")
        if not quiet:
            print(f"\r  {label}: {seen.count:,}/{n:,} requests", end="", file=sys.stderr, flush=True)
        if seen.count >= n:
            if not quiet:
                print(file=sys.stderr)
            return seen
        if seen.count != last_count:
            last_count, changed = seen.count, time.monotonic()
        elif time.monotonic() - changed > stall:
            raise RuntimeError(f"{label}: stuck at {seen.count:,} of {n:,} requests for {stall:.0f} s")
        await asyncio.sleep(0.05 if quiet else 0.5)


def write_playbook(folder: Path, n: int) -> Path:
    rng = random.Random(7)
    (folder / "guides.csv").write_text("id,name,channel_code,contact_code\ng1,小李,G01,wx_g1\n", encoding="utf-8")
    with (folder / "members.csv").open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "name", "phone"])
        for i in range(n):
            w.writerow([f"m{i}", rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN), f"139{rng.randrange(10**8):08d}"])
    path = folder / "fanout.yaml"
    path.write_text(PLAYBOOK.replace("REACH", str(n)), encoding="utf-8")
    return path


def fresh_store(url: str) -> Engine:
    if url.startswith("postgres"):
        ensure_database(url)
        scratch = make_engine(url)
        with scratch.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        scratch.dispose()
    return open_store(url)


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database `url` names if the server does not have it yet."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": target.database}).first() is None:
                conn.execute(text(f'CREATE DATABASE "{target.database}"'))
                print(f"created the PostgreSQL database {target.database!r} for the bench", file=sys.stderr)
    finally:
        admin.dispose()


async def schedule_event(engine: Engine, settings: Settings, path: Path) -> str:
    assert settings.redis_url is not None
    pool = await pool_for(settings.redis_url)
    try:
        return (await schedule(engine, pool, settings, path, speed=SPEED)).event_id
    finally:
        await pool.aclose()


async def engine_run(n: int, event_id: str) -> dict[str, float]:
    """`--one`: a real worker sends the scheduled reminder; returns its rate, planning time and peak RSS."""
    settings = Settings.from_env(env_file=None)
    assert settings.redis_url is not None and settings.webhook_url is not None
    base = settings.webhook_url.rsplit("/", 1)[0]
    engine = await asyncio.to_thread(open_store, settings.database_url)
    worker = make_worker(settings, settings.redis_url, engine=engine, handle_signals=False)
    settle_process()  # as `orchestrator worker` runs
    task = asyncio.create_task(worker.async_run())
    try:
        first = await until_seen(base, 1, f"engine {n:,}", quiet=True)
        cpu0 = time.process_time()
        seen = await until_seen(base, n, f"engine {n:,}")
        cpu = time.process_time() - cpu0
        per_message = await cpu_of(base)
        for _ in range(600):  # until the step is done: the last finish() is recorded
            state, started = await asyncio.to_thread(step_row, engine, event_id)
            if state == "done":
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError(f"{STEP_ID} is still {state} two minutes after the last request")
    finally:
        await worker.close()
        with suppress(asyncio.CancelledError):
            await task
    busy = cpu / max(seen.last - first.last, 1e-9)
    return {"rate": seen.rate, "planning": seen.first - started, "rss_mb": peak_rss_mb(),
            "busy": busy, "cpu": per_message}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's VmHWM belongs to the program (reset by exec);
    getrusage's ru_maxrss is not: it keeps the peak of the process that forked us (here the bench
    itself, which has just scheduled the event), so it would report the parent's memory."""
    with suppress(OSError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_row(engine: Engine, event_id: str) -> tuple[str, float]:
    with engine.connect() as conn:
        state, started = conn.execute(select(STEP.c.state, STEP.c.started_at).where(STEP.c.event_id == event_id, STEP.c.step_id == STEP_ID)).one()
    return state, started.timestamp() if started else 0.0


def outgoing(ev: Event, loaded: LoadedPlaybook, m: Member) -> Outgoing:
    r = step_renderer(loaded, STEP_ID, ev.live_start).render(m, Channel.WEBHOOK)
    address = {"phone": m.phone} if m.phone else {}
    return Outgoing(key_of(ev.id, STEP_ID, m.id, "webhook"), ev.id, STEP_ID, m.id, "webhook", m.name, r.text, address)


async def bare_loop(base: str, n: int, body: bytes) -> Seen:
    """The same posts, made once: one body and its signed headers, sent N times."""
    left = iter(range(n))
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Orchestrator-Timestamp": ts, "X-Orchestrator-Signature": sign("bench-secret", ts, body),
               "Idempotency-Key": "fanout:reminder:go:m0:webhook"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def poster() -> None:
            for _ in left:
                async with session.post(base + "/hook", data=body, headers=headers) as resp:
                    await resp.read()
                    resp.raise_for_status()

        _, seen = await asyncio.gather(asyncio.gather(*(poster() for _ in range(CONCURRENCY))), until_seen(base, n, f"bare {n:,}"))
    return seen


async def ledger_off(settings: Settings, engine: Engine, ev: Event, loaded: LoadedPlaybook, base: str, n: int) -> Seen:
    """The engine's checks and sending in its lanes and batches, with no send rows written."""
    assert settings.redis_url is not None
    pool = await pool_for(settings.redis_url)
    rt = Runtime(settings, engine, pool)
    due = await rt.db(step_time, engine, ev.id, STEP_ID)
    caps_periods = periods(due.astimezone(loaded.playbook.tz))
    ids = list(loaded.members)
    batches = iter(range(0, len(ids), BATCH))

    async def lane() -> None:
        for i in batches:  # shared: each lane takes the next batch
            claimed = [Claimed(i + j, m, "webhook", "webhook", 1, key_of(ev.id, STEP_ID, m, "webhook"), False) for j, m in enumerate(ids[i:i + BATCH])]
            batch = await rt.db(checked_batch, engine, ev.id, claimed, caps_periods)
            done = await deliver(rt, ev, loaded, due, STEP_ID, batch)
            if done.sent != len(claimed):
                raise RuntimeError(f"ledger-off send failed: {next(r.error for r in done.results if r.state != 'sent')}")

    try:
        _, seen = await asyncio.gather(asyncio.gather(*(lane() for _ in range(LANES))), until_seen(base, n, f"ledger off {n:,}"))
    finally:
        await rt.close()
        await pool.aclose()
    return seen


async def no_engine(settings: Settings, ev: Event, loaded: LoadedPlaybook, base: str, n: int) -> Seen:
    transport = build_transports(settings)["webhook"]
    members = list(loaded.members.values())
    batches = iter(range(0, len(members), BATCH))

    async def lane() -> None:
        for i in batches:  # shared: each lane takes the next batch
            outcomes = await transport.send_batch([outgoing(ev, loaded, m) for m in members[i:i + BATCH]])
            if any(o.state != "sent" for o in outcomes):
                raise RuntimeError(f"no-engine send failed: {next(o.error for o in outcomes if o.state != 'sent')}")

    try:
        _, seen = await asyncio.gather(asyncio.gather(*(lane() for _ in range(LANES))), until_seen(base, n, f"no engine {n:,}"))
    finally:
        await transport.close()
    return seen


async def baselines(settings: Settings, engine: Engine, ev: Event, base: str, n: int) -> tuple[tuple[Seen, dict[str, float]], ...]:
    """(what the receiver saw, CPU per message) of the bare loop, the ledger switched off and no engine."""
    loaded = loaded_event(engine, ev)
    steady_gc()  # the garbage collector as in the engine's worker process (settle_process)
    sample = outgoing(ev, loaded, next(iter(loaded.members.values())))
    body = orjson.dumps(payload(sample))
    out = []
    for run in (lambda: bare_loop(base, n, body), lambda: ledger_off(settings, engine, ev, loaded, base, n),
                lambda: no_engine(settings, ev, loaded, base, n)):
        await call(base + "/reset", "POST")
        seen = await run()
        out.append((seen, await cpu_of(base)))
    return tuple(out)


@dataclass
class Figures:
    engine: float
    bare: float
    off: float  # the ledger switched off
    plain: float  # no engine
    planning: float
    rss_mb: float
    busy: float  # the engine process's CPU time over its sending time: 1.0 is one core saturated
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> CpuSampler.per_message


VARIANTS = {"engine": "engine", "bare": "bare", "off": "ledger off", "plain": "no engine"}


def run_size(db: str, n: int, pg_url: str, base: str) -> Figures:
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        folder = Path(tmp)
        path = write_playbook(folder, n)
        url = pg_url if db == "postgresql" else f"sqlite:///{folder / 'bench.db'}"
        with redis_url(None, folder / "data") as rurl:
            env = {"DATABASE_URL": url, "REDIS_URL": rurl, "ORCH_DATA_DIR": str(folder / "data"), "ORCH_WEBHOOK_URL": base + "/hook",
                   "ORCH_WEBHOOK_SECRET": "bench-secret", "ORCH_SEND_CONCURRENCY": str(CONCURRENCY)}
            settings = Settings.from_env(env, env_file=None)
            engine = fresh_store(url)
            asyncio.run(call(base + "/reset", "POST"))
            event_id = asyncio.run(schedule_event(engine, settings, path))
            child = subprocess.run([sys.executable, str(HERE), "--one", str(n), "--event", event_id], env={**os.environ, **env},
                                   stdout=subprocess.PIPE, text=True, check=True)
            figures = json.loads(child.stdout.strip().splitlines()[-1])
            (bare, bare_cpu), (off, off_cpu), (plain, plain_cpu) = asyncio.run(baselines(settings, engine, get_event(engine, event_id), base, n))
            engine.dispose()
    return Figures(figures["rate"], bare.rate, off.rate, plain.rate, figures["planning"], figures["rss_mb"], figures["busy"],
                   {"engine": figures["cpu"], "bare": bare_cpu, "off": off_cpu, "plain": plain_cpu})


def ratio_line(label: str, ratio: float, target: float, at_least: bool = True) -> None:
    met = ratio >= target if at_least else ratio <= target
    print(f"  {label:28s} {ratio:5.2f}  (target {'≥' if at_least else '≤'} {target})  {'ok' if met else 'MISSES'}")


RECEIVERS = {"uvicorn": "a Starlette route in one uvicorn process (uvloop + httptools)", "aiohttp": "a bare aiohttp.web handler in its own process"}


def median_figures(rounds: list[Figures]) -> Figures:
    """Each figure's median over the rounds (a machine that slows down or speeds up during a run
    weighs on every variant, not on the one it happened to run)."""
    numbers = [name for name in Figures.__dataclass_fields__ if name != "cpu"]
    cpu = {variant: {key: statistics.median(f.cpu[variant][key] for f in rounds if f.cpu.get(variant))
                     for key in rounds[0].cpu.get(variant, {})} for variant in VARIANTS}
    return Figures(*(statistics.median(getattr(f, name) for f in rounds) for name in numbers), cpu=cpu)


def report(db: str, results: dict[int, list[Figures]], latency_ms: float, kind: str) -> None:
    answers = f"answering after {latency_ms:g} ms" if latency_ms else "answering at once"
    rounds = len(next(iter(results.values())))
    print(f"\n{db}: webhook reminder, {CONCURRENCY} in flight, {LANES} drain lanes; receiver: {RECEIVERS[kind]}, {answers}; "
          f"{rounds} round{'s' if rounds > 1 else ''}, each variant in turn")
    print(f"{'recipients':>10} {'engine':>9} {'bare':>9} {'ledger off':>10} {'no engine':>10}  posts/s   {'planning':>9} {'peak RSS':>9} {'engine CPU':>11}")
    medians = {n: median_figures(fs) for n, fs in results.items()}
    for n, fs in results.items():
        for label, f in [*((f"round {i + 1}", f) for i, f in enumerate(fs)), *((("median", medians[n]),) if len(fs) > 1 else ())]:
            print(f"{n:>10,} {f.engine:>9,.0f} {f.bare:>9,.0f} {f.off:>10,.0f} {f.plain:>10,.0f}            {f.planning:>7.1f} s {f.rss_mb:>6.0f} MB"
                  f" {f.busy:>10.0%}  {label}")
    for n, f in medians.items():
        each = results[n]
        ratio_line(f"{n:>7,}: engine ÷ bare", f.engine / f.bare, 0.7)
        if len(each) > 1:
            print(f"           each round: {', '.join(f'{r.engine / r.bare:.2f}' for r in each)}")
        ratio_line(f"{n:>7,}: ledger ÷ ledger off", f.engine / f.off, 0.8)
        if len(each) > 1:
            print(f"           each round: {', '.join(f'{r.engine / r.off:.2f}' for r in each)}")
        print(f"  {n:>7,}: engine ÷ no engine       {f.engine / f.plain:5.2f}  (no target: the engine's whole cost on top of the channel)")
    print(f"CPU per message, µs of the whole machine over the middle 80% of each run's requests{' (medians)' if rounds > 1 else ''}:")
    print(f"{'recipients':>10} {'variant':<11}{'sender':>8}{'receiver':>9}{'PostgreSQL':>11}{'Redis':>7}{'other':>7}{'total':>7}   machine busy (of {os.cpu_count() or 1}00%)")
    for n, f in medians.items():
        for variant, label in VARIANTS.items():
            c = f.cpu.get(variant)
            if c:
                print(f"{n:>10,} {label:<11}{c['sender']:>8.0f}{c['receiver']:>9.0f}{c['postgres']:>11.0f}{c['redis']:>7.0f}{c['other']:>7.0f}"
                      f"{c['total']:>7.0f}   {c['busy']:.0%}")
        if f.cpu.get("engine") and f.cpu.get("off"):
            extra = {role: f.cpu["engine"][role] - f.cpu["off"][role] for role in (*ROLES, "total")}
            print(f"{n:>10,} the ledger: {extra['total']:+.0f} µs a message ({', '.join(f'{role} {extra[role]:+.0f}' for role in ROLES)})")
    if len(medians) > 1:
        small, big = min(medians), max(medians)
        ratio_line(f"memory {big:,} ÷ {small:,}", medians[big].rss_mb / medians[small].rss_mb, 1.5, at_least=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="recipients per run, comma-separated")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--peer-latency", type=float, default=0.0, metavar="MS",
                        help="the receiver answers after this many milliseconds (default 0: as fast as it can)")
    parser.add_argument("--receiver", choices=tuple(RECEIVERS), default="uvicorn",
                        help="the peer: uvicorn (default; PERFORMANCE.md's baseline receiver) or aiohttp (a faster peer: the sender's CPU decides)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every size and variant, in turns; the figures are their medians")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--event", help=argparse.SUPPRESS)
    args = parser.parse_args()
    uvloop.install()  # every loop here is uvloop's, as `orchestrator worker`'s is: the baselines run on the engine's loop
    if args.serve_receiver:
        return receiver(args.peer_latency / 1000, args.receiver)
    if args.one:
        print(json.dumps(asyncio.run(engine_run(args.one, args.event))))
        return None
    t0 = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")]
    proc = subprocess.Popen([sys.executable, str(HERE), "--serve-receiver", "--receiver", args.receiver, "--peer-latency", str(args.peer_latency)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        for db in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
            results: dict[int, list[Figures]] = {n: [] for n in sizes}
            for _ in range(args.rounds):  # every size and variant once per round, in turns
                for n in sizes:
                    results[n].append(run_size(db, n, args.pg_url, base))
            report(db, results, args.peer_latency, args.receiver)
    finally:
        proc.terminate()
        proc.wait()
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    return None


if __name__ == "__main__":
    main()
