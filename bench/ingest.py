"""How fast comments come in through the signed ingestion endpoint, against a bare route, in one run.

One uvicorn process (uvloop + httptools, as `orchestrator web` runs it) serves the real app: every
request is signed, checked, de-duplicated and appended to the event's durable stream before it is
answered. Beside it, the same server settings serve a bare Starlette route that reads and parses
the body and answers the same JSON. CLIENTS requests are in flight at once (aiohttp); singles carry one comment,
batches BATCH; a round of batches sends 25 times COMMENTS. After each round what waits in the stream is moved
into the store (the workers do it all along), and at the end every comment is counted: stored == sent.

    python bench/ingest.py [--comments 20000] [--clients 200] [--batch 100] [--rounds 3] [--only single|batches]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.scan's server helpers and the tests' playbook maker

import aiohttp  # noqa: E402
from redis.asyncio import Redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.scan import children_cpu, cpu, p99, serve  # noqa: E402
from orchestrator.channels.webhook import sign  # noqa: E402
from orchestrator.embedded_redis import redis_url  # noqa: E402
from orchestrator.instream import InStream  # noqa: E402
from orchestrator.store import Comment, open_store  # noqa: E402
from tests.engine.eventfiles import EventFiles, crowd  # noqa: E402

SECRET = "bench-secret"


def bare_app() -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def route(request: Request) -> JSONResponse:  # reads and parses the body, answers the same JSON: nothing else
        body = json.loads(await request.body())
        return JSONResponse({"stored": len(body["comments"]) if "comments" in body else 1, "duplicates": 0})

    return Starlette(routes=[Route("/api/events/{event}/comments", route, methods=["POST"])])


def own_cpu() -> float:
    """CPU seconds this process (the load generator) has used so far."""
    times = os.times()
    return times.user + times.system


def bodies(n_comments: int, per_request: int, offset: int) -> list[tuple[bytes, dict[str, str]]]:
    out = []
    for start in range(0, n_comments, per_request):
        items = [{"platform": "wechat_channels", "room": "r1", "message_id": f"m{offset + i}", "user_id": f"u{(offset + i) % 5000}",
                  "name": "观众", "text": "焕新！主播好", "time": "2027-06-10T19:30:00+08:00"}
                 for i in range(start, min(start + per_request, n_comments))]
        raw = json.dumps({"comments": items} if per_request > 1 else items[0], ensure_ascii=False).encode()
        ts = str(int(time.time()))
        out.append((raw, {"Content-Type": "application/json", "X-Orchestrator-Timestamp": ts,
                          "X-Orchestrator-Signature": sign(SECRET, ts, raw)}))
    return out


async def load(url: str, requests: list[tuple[bytes, dict[str, str]]], clients: int) -> tuple[float, list[float]]:
    left = iter(requests)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client() -> None:
            for body, headers in left:
                t = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url}: HTTP {resp.status}: {await resp.text()}")
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t0, latencies


def schedule(url: str, folder: Path, rurl: str) -> str:
    from orchestrator import scheduling
    from orchestrator.settings import Settings
    from orchestrator.worker import pool_for

    path = EventFiles(people=crowd(2)).write(folder / "event")
    settings = Settings.from_env({"DATABASE_URL": url, "ORCH_DATA_DIR": str(folder / "data"), "ORCH_ROUTES": "sms=console,email=console"},
                                 env_file=None)

    async def go() -> str:
        pool = await pool_for(rurl)
        try:
            return (await scheduling.schedule(open_store(url), pool, settings, path)).event_id
        finally:
            await pool.aclose()
    return asyncio.run(go())


async def drain(rurl: str, url: str) -> int:
    """Move every waiting comment into the store, as the workers do all along."""
    redis = Redis.from_url(rurl)
    try:
        return await InStream(redis).move_all(open_store(url))
    finally:
        await redis.aclose()


async def persistence(rurl: str) -> str:
    redis = Redis.from_url(rurl)
    try:
        state, stats, memory = await redis.info("persistence"), await redis.info("stats"), await redis.info("memory")
        commands = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return (f"  Redis persistence: {stats['total_forks']} forks (AOF rewrites and snapshots: each a process beside the three),"
            f" AOF {state['aof_current_size'] / 1e6:,.0f} MB, peak memory {memory['used_memory_peak'] / 1e6:,.0f} MB\n"
            f"  Redis time per command: " + ", ".join(f"{name.removeprefix('cmdstat_')} {c['usec_per_call']:.1f} µs × {c['calls']:,}"
                                                      for name, c in sorted(commands.items(), key=lambda kv: -kv[1]['usec'])[:8]))


async def _server_pid(url: str) -> int:
    redis = Redis.from_url(url)
    try:
        return int((await redis.info("server"))["process_id"])
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--comments", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="app and bare runs, taken in turns; the ratio is their medians'")
    parser.add_argument("--only", choices=("single", "batches"), help="run one of the two (for profiling)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'bench.db'}"
        with redis_url(None, folder / "data") as rurl:
            event_id = schedule(url, folder, rurl)
            redis_pid = int(asyncio.run(_server_pid(rurl)))
            cpu_lines: list[str] = []
            env = {"DATABASE_URL": url, "REDIS_URL": rurl, "ORCH_DATA_DIR": str(folder / "data"), "ORCH_INGEST_SECRET": SECRET}
            sent = 0
            moving = [0.0, 0.0]  # comments moved into the store, seconds it took
            bare_env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            for label, per in (("single", 1), (f"batches of {args.batch}", args.batch)):
                if args.only and not label.startswith(args.only):
                    continue
                n = args.comments if per == 1 else args.comments * 25  # a batch round of 100k comments was a quarter second bare: noise
                proc, base = serve("web.app:app_from_env", env)
                bproc, bbase = serve("bench.ingest:bare_app", bare_env)
                runs: list[tuple[float, float]] = []
                lat: list[float] = []
                blat: list[float] = []
                used = {"web": 0.0, "redis": 0.0, "bare": 0.0, "client": 0.0, "bare client": 0.0, "wall": 0.0, "bare wall": 0.0, "forks": 0.0}  # CPU seconds in the timed runs
                try:
                    endpoint, bare = (f"{b}/api/events/{event_id}/comments" for b in (base, bbase))
                    asyncio.run(load(endpoint, bodies(min(1000, n), per, 10_000_000 + sent), args.clients))
                    asyncio.run(load(bare, bodies(min(1000, n), per, 15_000_000 + sent), args.clients))
                    sent += min(1000, n)
                    for r in range(args.rounds):  # in turns, so a machine speeding up or slowing down weighs on both
                        requests = bodies(n, per, sent)
                        web0, redis0, client0, forks0 = cpu(proc.pid), cpu(redis_pid), own_cpu(), children_cpu(redis_pid)
                        elapsed, some = asyncio.run(load(endpoint, requests, args.clients))
                        used["web"] += cpu(proc.pid) - web0
                        used["redis"] += cpu(redis_pid) - redis0
                        used["forks"] += children_cpu(redis_pid) - forks0
                        used["client"] += own_cpu() - client0
                        used["wall"] += elapsed
                        requests = bodies(n, per, sent)
                        bare0, client0 = cpu(bproc.pid), own_cpu()
                        belapsed, bsome = asyncio.run(load(bare, requests, args.clients))
                        used["bare"] += cpu(bproc.pid) - bare0
                        used["bare client"] += own_cpu() - client0
                        used["bare wall"] += belapsed
                        sent += n
                        t_move = time.perf_counter()
                        moving[0] += asyncio.run(drain(rurl, url))  # what the workers do all along; here between the timed runs
                        moving[1] += time.perf_counter() - t_move
                        runs.append((n / elapsed, n / belapsed))
                        lat += some
                        blat += bsome
                        print(f"  {label}, round {r + 1}: {n / elapsed:,.0f} vs bare {n / belapsed:,.0f} comments/s", file=sys.stderr)
                finally:
                    for p in (proc, bproc):
                        p.terminate()
                        p.wait()
                rate, brate = statistics.median(a for a, _ in runs), statistics.median(b for _, b in runs)
                results.append((label, [(rate, statistics.median(lat), p99(lat)), (brate, statistics.median(blat), p99(blat))]))
                per_k = 1000 / (n * args.rounds)
                busy = {k: used[k] / used["wall"] * 100 for k in ("web", "redis", "client")}
                bare_busy = {k: used[k] / used["bare wall"] * 100 for k in ("bare", "bare client")}
                cpu_lines.append(f"  {label}: CPU ms per 1,000 comments: web {used['web'] * 1000 * per_k:.1f} + Redis {used['redis'] * 1000 * per_k:.1f}"
                                 f" + load generator {used['client'] * 1000 * per_k:.1f} + Redis's forks {used['forks'] * 1000 * per_k:.1f}; bare {used['bare'] * 1000 * per_k:.1f}"
                                 f" + load generator {used['bare client'] * 1000 * per_k:.1f}\n"
                                 f"    busy: web {busy['web']:.0f}%, Redis {busy['redis']:.0f}%, load generator {busy['client']:.0f}%;"
                                 f" bare {bare_busy['bare']:.0f}%, load generator {bare_busy['bare client']:.0f}% (of one core; two here)")

            cpu_lines.append(asyncio.run(persistence(rurl)))
            cpu_lines.append(f"  moved into the store between rounds (the workers' part, SQLite): {moving[0]:,.0f} comments,"
                             f" {moving[0] / max(moving[1], 1e-9):,.0f}/s")
            asyncio.run(drain(rurl, url))
            with open_store(url).connect() as conn:
                stored = conn.execute(select(func.count()).select_from(Comment.__table__)).scalar_one()  # type: ignore[attr-defined]
    print(f"comment ingestion, {args.clients} clients, one uvicorn process each, signed requests, durable (Redis AOF) before the answer;"
          f" {args.rounds} rounds in turns with the bare route (medians)")
    print(f"  {'':22} {'comments/s':>11} {'p50 ms':>8} {'p99 ms':>8}   {'bare/s':>9} {'p99 ms':>8}   ratio   p99 ×")
    for label, ((rate, p50, tail), (brate, _bp50, btail)) in results:
        ratio, tail_x = rate / brate, tail / btail
        verdict = "ok" if ratio >= 0.5 and tail_x <= 3 else "MISSES"
        print(f"  {label:22} {rate:>11,.0f} {p50 * 1000:>8.1f} {tail * 1000:>8.1f}   {brate:>9,.0f} {btail * 1000:>8.1f}   {ratio:5.2f}  {tail_x:5.2f}"
              f"  (targets ≥ 0.5, ≤ 3)  {verdict}")
    print(f"  stored after moving: {stored:,} of {sent:,} sent ({'exact' if stored == sent else 'MISMATCH'})")
    print("\n".join(cpu_lines))


if __name__ == "__main__":
    main()
