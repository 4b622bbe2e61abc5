"""How fast the scan route answers with pool rotation, against a bare route, in the same run.

One uvicorn process (uvloop + httptools, as `orchestrator web` runs it) serves the real app: every
request is a new person scanning a poster code, so each one counts the scan and takes a place in
the pool, which moves on every `MARGIN` places. Beside it, the same server settings serve a bare
Starlette route returning the same page. CLIENTS requests are in flight at once (aiohttp).
Afterwards the pool's invariants are checked: groups filled strictly in order, none beyond its
margin, places taken == scans counted == requests answered.

    python bench/scan.py [--requests 20000] [--clients 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
from redis.asyncio import Redis
from sqlalchemy import insert

from orchestrator.embedded_redis import redis_url
from orchestrator.pool import GROUP, Pool, group_values
from orchestrator.scans import scan_counts
from orchestrator.scheduling import SCANCODE
from orchestrator.store import Event, open_store, utc_now
from orchestrator.webserver import APP, command

HERE = Path(__file__).resolve()
MARGIN = 45
CAPACITY = 50
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def bare_app() -> object:
    """The baseline: the same page from a bare route (`--bare` serves it)."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    page = Path(os.environ["BENCH_PAGE"]).read_text(encoding="utf-8")

    async def route(_request: object) -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/s/{code}", route)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """CPU seconds a process's children (Redis's AOF rewrites, ...) used, once they ended."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def serve(target: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = command(port)
    cmd[cmd.index(APP)] = target  # the bare apps run with the same server settings
    proc = subprocess.Popen(cmd, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, url
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{target} did not start")


async def load(url: str, n: int, clients: int) -> tuple[float, list[float], str]:
    """`n` GETs, `clients` at once, no cookies kept (each request a new person)."""
    left = iter(range(n))
    latencies: list[float] = []
    sample = ""
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
        async def client() -> None:
            nonlocal sample
            for _ in left:
                t = time.perf_counter()
                async with session.get(url) as resp:
                    body = await resp.text()
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: HTTP {resp.status}")
                latencies.append(time.perf_counter() - t)
                sample = sample or body

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return n / elapsed, latencies, sample


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


def seed(url: str, groups: int) -> str:
    """An event with one scan code and `groups` groups of margin MARGIN; returns the code."""
    engine = open_store(url)
    now = utc_now()
    start = now + timedelta(days=3)
    with engine.begin() as conn:
        conn.execute(insert(Event.__table__).values(  # type: ignore[attr-defined]
            id="bench-scan", playbook_id="bench", title="压测直播：扫码进群", entry="x.yaml", playbook_hash="0" * 64,
            timezone="Asia/Shanghai", live_start=start, live_end=start + timedelta(hours=2), state="scheduled", mode="live",
            revision=1, speed=1.0, real_origin=now.timestamp(), virtual_origin=now.timestamp(), audience=0, created_at=now, updated_at=now))
        conn.execute(insert(SCANCODE).values(code="benchcode1", event_id="bench-scan", guide_id="g1", variant="A"))
        expires = datetime.now(timezone.utc) + timedelta(days=7)
        conn.execute(insert(GROUP), [{"event_id": "bench-scan", "number": n,
                                      **group_values(f"压测{n}群", PNG, capacity=CAPACITY, margin=MARGIN, expires_at=expires)}
                                     for n in range(1, groups + 1)])
    engine.dispose()
    return "benchcode1"


async def invariants(rurl: str, url: str, answered: int) -> list[str]:
    engine = open_store(url)
    redis = Redis.from_url(rurl)
    try:
        taken = await Pool(redis, engine).counts("bench-scan")
        scans = await scan_counts(redis, "bench-scan")
    finally:
        await redis.aclose()
        engine.dispose()
    problems = []
    counts = [taken.get(n, 0) for n in range(1, max(taken, default=0) + 1)]
    if any(c > MARGIN for c in counts):
        problems.append(f"a group beyond its margin: {max(counts)} > {MARGIN}")
    last = max((i for i, c in enumerate(counts) if c), default=-1)
    if any(c != MARGIN for c in counts[:last]):
        problems.append("groups not filled strictly in order")
    if sum(counts) != answered:
        problems.append(f"places taken {sum(counts):,} != requests answered {answered:,}")
    if scans.get("total", 0) != answered:
        problems.append(f"scans counted {scans.get('total', 0):,} != requests answered {answered:,}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="scan and bare runs, taken in turns; the ratio is their medians'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan-") as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'bench.db'}"
        warm = min(500, args.requests)
        total = args.requests * args.rounds + warm
        code = seed(url, groups=total // MARGIN + 2)
        rounds: list[tuple[float, float]] = []
        with redis_url(None, folder / "data") as rurl:
            env = {"DATABASE_URL": url, "REDIS_URL": rurl, "ORCH_DATA_DIR": str(folder / "data")}
            proc, base = serve("web.app:app_from_env", env)
            bproc = None
            try:
                asyncio.run(load(f"{base}/s/{code}", warm, args.clients))  # warm-up: cache, connections
                _, _, page = asyncio.run(load(f"{base}/s/{code}", 1, 1))
                (folder / "page.html").write_text(page, encoding="utf-8")
                bproc, bbase = serve("bench.scan:bare_app", {"BENCH_PAGE": str(folder / "page.html"), "PYTHONPATH": str(HERE.parent.parent)})
                asyncio.run(load(f"{bbase}/s/{code}", warm, args.clients))
                lat: list[float] = []
                blat: list[float] = []
                for n in range(args.rounds):  # in turns, so a machine slowing down or speeding up weighs on both
                    rate, some, _ = asyncio.run(load(f"{base}/s/{code}", args.requests, args.clients))
                    brate, bsome, _ = asyncio.run(load(f"{bbase}/s/{code}", args.requests, args.clients))
                    rounds.append((rate, brate))
                    lat += some
                    blat += bsome
                    print(f"  round {n + 1}: scan {rate:,.0f} req/s, bare {brate:,.0f} req/s, {rate / brate:.2f}", file=sys.stderr)
            finally:
                for p in (proc, bproc):
                    if p is not None:
                        p.terminate()
                        p.wait()
            problems = asyncio.run(invariants(rurl, url, total + 1))
    rate, brate = statistics.median(r for r, _ in rounds), statistics.median(b for _, b in rounds)
    print(f"scan route, {args.rounds} × {args.requests:,} requests (each a new person taking a place), {args.clients} clients,"
          " one uvicorn process each, scan and bare in turns (medians)")
    print(f"  {'':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"  {'scan':10} {rate:>8,.0f} {statistics.median(lat) * 1000:>8.1f} {p99(lat) * 1000:>8.1f}")
    print(f"  {'bare':10} {brate:>8,.0f} {statistics.median(blat) * 1000:>8.1f} {p99(blat) * 1000:>8.1f}")
    ratio = rate / brate
    print(f"  each round: {', '.join(f'{r / b:.2f}' for r, b in rounds)}")
    print(f"  scan ÷ bare {ratio:5.2f}  (target ≥ 0.5)  {'ok' if ratio >= 0.5 else 'MISSES'}")
    print(f"  invariants: {'exact' if not problems else '; '.join(problems)}")


if __name__ == "__main__":
    main()
