"""How fast what happens reaches the host board's viewers, against a bare websocket broadcast.

One uvicorn process serves the web app, one `orchestrator worker` moves ingested comments and
publishes snapshots; VIEWERS websocket viewers are connected to the board while comments are posted
(signed) at RATE per second for SECONDS, each from a new person, so the board's "commented" count
is the number of comments acknowledged. For every snapshot a viewer gets, the latency is the time
since the acknowledgement of the comment that brought the count to what it shows. Then a bare
`websockets.broadcast()` server sends a snapshot of the same size at the same pace to the same
number of viewers; its latency is from send to receipt. Finally the board run is repeated with one
viewer that stops reading, to see that it does not hold the others back.

    python bench/board.py [--viewers 1000] [--rate 2000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import websockets  # noqa: E402

from bench.ingest import SECRET, schedule  # noqa: E402
from bench.scan import free_port, p99, serve  # noqa: E402
from orchestrator.channels.webhook import sign  # noqa: E402
from orchestrator.embedded_redis import redis_url  # noqa: E402
from orchestrator.store import Event, open_store  # noqa: E402

TICK = 0.05  # the publisher's pace, which the bare broadcast copies


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def viewers(url: str, n: int, on_message: Any, stalled: bool = False) -> list[Any]:
    conns = []
    for i in range(n):
        ws = await websockets.connect(url, max_size=None, open_timeout=30)
        conns.append(ws)

    async def read(i: int, ws: Any) -> None:
        try:
            async for message in ws:
                on_message(i, message, time.perf_counter())
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(conns) if not (stalled and i == 0)]
    return [conns, tasks]


async def board_run(base: str, event_id: str, key: str, n: int, rate: int, seconds: float, stalled: bool) -> dict[str, Any]:
    run = "s" if stalled else "f"  # each run's people are new: the count starts where the last run left it
    acks: list[tuple[int, float]] = []  # (cumulative comments acknowledged, when)
    seen: list[tuple[int, float]] = []
    received = [0] * n

    def on_message(i: int, message: Any, at: float) -> None:
        snap = json.loads(message)
        count = next(f["count"] for f in snap["funnel"] if f["step"] == "commented")
        received[i] += 1
        if i != 0 or not stalled:
            seen.append((count, at))

    conns, tasks = await viewers(f"ws://{base.split('://')[1]}/board/{event_id}/ws?t={key}", n, on_message, stalled)
    await asyncio.sleep(1.0)  # the first snapshots
    base_count = max((c for c, _t in seen), default=0)
    seen.clear()
    sent = 0
    batch = max(1, rate // 100)  # 100 posts a second
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        posts = []

        async def post(first: int) -> None:
            items = [{"platform": "other", "room": "r", "message_id": f"{run}b{first + i}", "user_id": f"{run}p{first + i}", "name": "观众",
                      "text": "焕新", "time": "2027-06-10T19:30:00+08:00"} for i in range(batch)]
            raw = json.dumps({"comments": items}, ensure_ascii=False).encode()
            ts = str(int(time.time()))
            async with http.post(f"{base}/api/events/{event_id}/comments", data=raw,
                                 headers={"Content-Type": "application/json", "X-Orchestrator-Timestamp": ts,
                                          "X-Orchestrator-Signature": sign(SECRET, ts, raw)}) as r:
                await r.read()
            acks.append((base_count + first + batch, time.perf_counter()))

        while time.perf_counter() - start < seconds:
            posts.append(asyncio.create_task(post(sent)))
            sent += batch
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
        await asyncio.gather(*posts)
    await asyncio.sleep(3.0)  # the last snapshots
    for t in tasks:
        t.cancel()
    for ws in conns:
        await ws.close()
    acks.sort()
    counts = [c for c, _t in acks]
    reached: list[float] = []  # acknowledgements finish out of order: a count is reached when all before it were acknowledged
    for _c, t in acks:
        reached.append(max(t, reached[-1]) if reached else t)
    latencies = []
    for count, at in seen:
        k = bisect.bisect_right(counts, count) - 1
        if k >= 0:
            latencies.append(at - reached[k])
    live = received[1:] if stalled else received
    return {"latencies": [max(0.0, v) for v in latencies], "sent": sent, "messages": statistics.mean(live) if live else 0,
            "fewest": min(live) if live else 0}


async def bare_run(n: int, size: int, seconds: float) -> dict[str, Any]:
    port = free_port()
    clients: set[Any] = set()

    async def handler(ws: Any) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    latencies: list[float] = []

    def on_message(_i: int, message: Any, at: float) -> None:
        latencies.append(at - float(message[:20]))

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None):
        conns, tasks = await viewers(f"ws://127.0.0.1:{port}", n, on_message)
        start = time.perf_counter()
        filler = "x" * max(0, size - 20)
        while time.perf_counter() - start < seconds:
            websockets.broadcast(clients, f"{time.perf_counter():<20.6f}{filler}")
            await asyncio.sleep(TICK)
        await asyncio.sleep(1.0)
        for t in tasks:
            t.cancel()
        for ws in conns:
            await ws.close()
    return {"latencies": latencies}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="board-") as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'bench.db'}"
        with redis_url(None, folder / "data") as rurl:
            event_id = schedule(url, folder, rurl)
            engine = open_store(url)
            with engine.connect() as conn:
                key = conn.execute(Event.__table__.select().where(Event.__table__.c.id == event_id)).one().board_key  # type: ignore[attr-defined]
            env = {"DATABASE_URL": url, "REDIS_URL": rurl, "ORCH_DATA_DIR": str(folder / "data"), "ORCH_INGEST_SECRET": SECRET,
                   "ORCH_ROUTES": "sms=console,email=console"}
            web, base = serve("web.app:app_from_env", env)
            worker = subprocess.Popen([sys.executable, "-c", "from orchestrator.cli import main; main()", "worker"], env={**os.environ, **env},
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(3)  # the worker connects and starts its publisher
                before = {name: cpu(p.pid) for name, p in (("web", web), ("worker", worker))}
                me = time.process_time()
                board = asyncio.run(board_run(base, event_id, key, args.viewers, args.rate, args.seconds, stalled=False))
                used = {name: cpu(p.pid) - before[name] for name, p in (("web", web), ("worker", worker))}
                used["bench (viewers + load)"] = time.process_time() - me
                stalled = asyncio.run(board_run(base, event_id, key, args.viewers, args.rate, args.seconds, stalled=True))
            finally:
                worker.terminate()
                web.terminate()
                worker.wait()
                web.wait()
            size = 6000
            bare = asyncio.run(bare_run(args.viewers, size, args.seconds))
    b, s, r = board["latencies"], stalled["latencies"], bare["latencies"]
    print(f"board: {args.viewers:,} viewers, {args.rate:,} comments/s for {args.seconds:.0f} s ({board['sent']:,} sent), snapshots every {TICK} s")
    print(f"  {'':34} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"  {'ack -> viewer (board)':34} {statistics.median(b) * 1000:>8.1f} {p99(b) * 1000:>8.1f}")
    print(f"  {'send -> viewer (bare broadcast)':34} {statistics.median(r) * 1000:>8.1f} {p99(r) * 1000:>8.1f}")
    print(f"  {'ack -> viewer, one viewer stalled':34} {statistics.median(s) * 1000:>8.1f} {p99(s) * 1000:>8.1f}")
    print(f"  board p99 ÷ bare p99: {p99(b) / p99(r):.2f} (target ≤ 1.5)  {'ok' if p99(b) <= 1.5 * p99(r) else 'MISSES'}")
    print(f"  stalled viewer: others' p99 {p99(s) / p99(b):.2f}x (target ≤ 1.2)  {'ok' if p99(s) <= 1.2 * p99(b) else 'MISSES'}")
    print(f"  snapshots per viewer: {board['messages']:.0f} on average, fewest {board['fewest']} (a viewer with fewer skipped ahead; "
          f"none is ever queued more than the latest)")
    print("  (latency runs from the HTTP answer; the count is raised inside the same script that acknowledges, so a viewer can see it first: "
          "those count as 0)")
    print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in used.items()))


if __name__ == "__main__":
    main()
