"""How fast what happens reaches the host board's viewers, against a bare websocket broadcast.

One uvicorn process serves the web app, one `orchestrator worker` moves ingested comments and
publishes snapshots; VIEWERS websocket viewers are connected to the board while another process
posts comments (signed) at RATE per second for SECONDS, each from a new person, so the board's
"commented" count is the number of comments acknowledged. For every snapshot a viewer gets, the
latency is the time since the acknowledgement of the comment that brought the count to what it
shows. Then the same viewers connect to a bare `websockets.broadcast()` server (a process of its
own, as the web app is) that sends a JSON message the size of the board's whole snapshot at the
publisher's pace, with the same server settings (no per-message deflate, as
orchestrator/webserver.py serves the board); its latency is from send to receipt, and the viewers
parse its messages as they parse the board's. Of the viewers, MEASURED parse and time every
message; the others take frames off the wire and answer pings (Drain), so that the bench's own
process is not the bottleneck of either figure. Finally the board run is repeated with one viewer
that stops reading, to see that it does not hold the others back. A Redis subscriber beside the web
process times what the worker publishes, so the board's latency splits into the worker's part
(acknowledgement to published) and the rest (web process, broadcast, delivery).

    python bench/board.py [--viewers 1000] [--rate 2000] [--seconds 60] [--per-post 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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
from redis.asyncio import Redis  # noqa: E402

from bench.ingest import SECRET, schedule  # noqa: E402
from bench.scan import cpu, free_port, p99, serve  # noqa: E402
from orchestrator.board import EVERY, channel  # noqa: E402
from orchestrator.channels.webhook import sign  # noqa: E402
from orchestrator.embedded_redis import redis_url  # noqa: E402
from orchestrator.store import Event, open_store  # noqa: E402

TICK = EVERY  # the publisher's pace, which the bare broadcast copies
MEASURED = 50  # viewers that parse and time every message; the others only take them off the wire (Drain)


class Drain(asyncio.Protocol):
    """A viewer that takes every frame off the wire and answers pings, without decoding messages.

    The server's work for it is the same as for any viewer; it costs this process little, so one
    process can hold 1,000 viewers and still time the MEASURED ones (full websocket clients that
    parse every message) without its own backlog in the figures.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buf = b""
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.frames = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(buf[:end].decode(errors="replace")))
                return
            self.upgraded.set_result(None)
            buf = buf[end + 4:]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if n - pos < head + length:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x9 and self.transport is not None:  # ping: a pong with the same payload, masked (with a zero key)
                self.transport.write(bytes([0x8A, 0x80 | length]) + b"\0\0\0\0" + buf[pos + head:pos + head + length])
            elif opcode in (0x1, 0x2):
                self.frames += 1
            pos += head + length
        self.buf = buf[pos:]

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def drain(url: str) -> Drain:
    host, _, rest = url.removeprefix("ws://").partition("/")
    address, port = host.split(":")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    _transport, protocol = await asyncio.get_running_loop().create_connection(lambda: Drain(request), address, int(port))
    await asyncio.wait_for(protocol.upgraded, 30)
    return protocol


async def viewers(url: str, n: int, on_message: Any, stalled: bool = False, measured: int = MEASURED) -> list[Any]:
    """`n` viewers of `url`: the first `measured` full clients that call `on_message`, the others Drains."""
    conns: list[Any] = []
    for i in range(n):
        conns.append(await websockets.connect(url, max_size=None, open_timeout=30) if i < measured else await drain(url))

    async def read(i: int, ws: Any) -> None:
        try:
            async for message in ws:
                on_message(i, message, time.perf_counter())
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(conns) if i < measured and not (stalled and i == 0)]
    return [conns, tasks]


async def post_comments(base: str, event_id: str, run: str, rate: int, seconds: float, batch: int) -> dict[str, Any]:
    """Post signed comments at `rate` a second for `seconds`, `batch` a post, each from a new person;
    when each batch was acknowledged."""
    acks: list[tuple[int, float]] = []  # (comments of this run acknowledged up to this batch, when)
    sent = 0
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
                if r.status != 200:
                    raise RuntimeError(f"comments answered {r.status}")
            acks.append((first + batch, time.perf_counter()))

        while time.perf_counter() - start < seconds:
            posts.append(asyncio.create_task(post(sent)))
            sent += batch
            await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
        await asyncio.gather(*posts)
    return {"sent": sent, "acks": acks}


async def whole_size(base: str, event_id: str, key: str) -> int:
    """The size of the board's whole snapshot (what a viewer gets first)."""
    async with websockets.connect(f"ws://{base.split('://')[1]}/board/{event_id}/ws?t={key}", max_size=None) as ws:
        return len(str(await ws.recv()).encode())


async def tap(redis_at: str, event_id: str, published: list[tuple[int, float]]) -> None:
    """Listen beside the web processes to what the worker publishes: (commented count, receipt time)
    of every snapshot, to tell the worker's part of the latency from the web process's."""
    client = Redis.from_url(redis_at)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel(event_id))
        async for message in pubsub.listen():
            if message.get("type") == "message":
                at = time.perf_counter()
                funnel = json.loads(message["data"])["funnel"]
                published.append((next(f["count"] for f in funnel if f["step"] == "commented"), at))
    finally:
        await pubsub.aclose()
        await client.aclose()


def since_ack(seen: list[tuple[int, float]], acks: list[tuple[int, float]]) -> list[float]:
    """For each (count, time) seen, the time since the acknowledgement that brought the count there
    (acknowledgements finish out of order: a count is reached when all before it were acknowledged)."""
    acks = sorted(acks)
    counts = [c for c, _t in acks]
    reached: list[float] = []
    for _c, t in acks:
        reached.append(max(t, reached[-1]) if reached else t)
    out = []
    for count, at in seen:
        k = bisect.bisect_right(counts, count) - 1
        if k >= 0:
            out.append(max(0.0, at - reached[k]))
    return out


def until_shown(by_viewer: dict[int, list[tuple[int, float]]], acks: list[tuple[int, float]]) -> list[float]:
    """For every acknowledged batch and every measured viewer, the time from the acknowledgement to
    the first message that viewer got showing it counted: what one comment waits, the publisher's
    round included (`since_ack` times only the newest comment a message shows)."""
    acks = sorted(acks)
    out: list[float] = []
    for shown in by_viewer.values():
        j = 0
        for count, at in acks:
            while j < len(shown) and (shown[j][0] < count or shown[j][1] < at):
                j += 1
            if j == len(shown):
                break
            out.append(shown[j][1] - at)
    return out


async def board_run(base: str, redis_at: str, event_id: str, key: str, n: int, rate: int, seconds: float, stalled: bool,
                    per_post: int) -> dict[str, Any]:
    """One run: `n` viewers on the board while comments come in."""
    run = "s" if stalled else "f"  # each run's people are new: the count starts where the last run left it
    seen: list[tuple[int, float]] = []
    published: list[tuple[int, float]] = []
    received = [0] * n
    shown = [0] * n  # each viewer's "commented": from the whole snapshot, then from patches that carry the funnel
    sizes: list[int] = []

    by_viewer: dict[int, list[tuple[int, float]]] = {}

    def on_message(i: int, message: Any, at: float) -> None:
        data = json.loads(message)
        funnel = data["patch"].get("funnel") if "patch" in data else data["funnel"]
        if funnel is not None:
            shown[i] = next(f["count"] for f in funnel if f["step"] == "commented")
        received[i] += 1
        if i == 1:
            sizes.append(len(message.encode()))
        if i != 0 or not stalled:
            seen.append((shown[i], at))
            by_viewer.setdefault(i, []).append((shown[i], at))

    conns, tasks = await viewers(f"ws://{base.split('://')[1]}/board/{event_id}/ws?t={key}", n, on_message, stalled)
    tasks.append(asyncio.create_task(tap(redis_at, event_id, published)))
    await asyncio.sleep(1.0)  # the first snapshots
    base_count = max((c for c, _t in seen), default=0)
    seen.clear()
    published.clear()
    by_viewer.clear()
    # the load comes from a process of its own, so the viewers' process only reads (perf_counter is
    # the system's monotonic clock: its acknowledgement times compare with the viewers' receipts)
    poster = await asyncio.create_subprocess_exec(sys.executable, __file__, "--post", base, event_id, run, str(rate), str(seconds), str(per_post),
                                                  stdout=asyncio.subprocess.PIPE)
    out, _err = await poster.communicate()
    posted = json.loads(out)
    sent = posted["sent"]
    acks = [(base_count + c, t) for c, t in posted["acks"]]
    await asyncio.sleep(3.0)  # the last snapshots
    for t in tasks:
        t.cancel()
    for i, ws in enumerate(conns):
        if isinstance(ws, Drain) and i < n:
            received[i] = ws.frames
        await ws.close()
    live = received[1:] if stalled else received
    return {"latencies": since_ack(seen, acks), "published": since_ack(published, acks), "each": until_shown(by_viewer, acks), "sent": sent, "messages": statistics.mean(live) if live else 0,
            "fewest": min(live) if live else 0, "size": statistics.median(sizes) if sizes else 0, "whole": sizes[0] if sizes else 0}


async def bare_server(port: int, size: int) -> None:
    """A bare `websockets.broadcast()` of a JSON message of `size` bytes every TICK to whoever is connected, until killed."""
    clients: set[Any] = set()

    async def handler(ws: Any) -> None:
        clients.add(ws)
        try:
            await ws.wait_closed()
        finally:
            clients.discard(ws)

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, compression=None):  # as the web app serves the board
        filler = "x" * max(0, size - 40)
        print("ready", flush=True)
        while True:
            websockets.broadcast(clients, json.dumps({"sent": time.perf_counter(), "filler": filler}))
            await asyncio.sleep(TICK)


async def bare_run(url: str, n: int, seconds: float) -> list[float]:
    """`n` viewers on the bare broadcast for `seconds`: its latencies, send to receipt."""
    latencies: list[float] = []

    def on_bare(_i: int, message: Any, at: float) -> None:  # parsed as the board's viewers parse theirs
        latencies.append(at - json.loads(message)["sent"])

    conns, tasks = await viewers(url, n, on_bare)
    await asyncio.sleep(1.0)
    latencies.clear()
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    for ws in conns:
        await ws.close()
    return latencies


def main() -> None:
    if sys.argv[1:2] == ["--post"]:  # the load of one run, from board_run
        base, event_id, run, rate, seconds, per_post = sys.argv[2:8]
        print(json.dumps(asyncio.run(post_comments(base, event_id, run, int(rate), float(seconds), int(per_post)))))
        return
    if sys.argv[1:2] == ["--bare"]:  # the bare broadcast, from main
        asyncio.run(bare_server(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--per-post", type=int, default=4,
                        help="comments a post carries (default 4: 500 posts a second at 2,000 comments/s). The newest comment a "
                             "snapshot shows is on average half a post's interval old when the publisher reads it, an age the bare "
                             "broadcast has no equivalent of: 100 posts a second added ~5 ms at p50 and ~10 ms at p99")
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
            bare = None
            try:
                time.sleep(3)  # the worker connects and starts its publisher
                size = asyncio.run(whole_size(base, event_id, key))
                before = {name: cpu(p.pid) for name, p in (("web", web), ("worker", worker))}
                me = time.process_time()
                board = asyncio.run(board_run(base, rurl, event_id, key, args.viewers, args.rate, args.seconds, stalled=False, per_post=args.per_post))
                used = {name: cpu(p.pid) - before[name] for name, p in (("web", web), ("worker", worker))}
                used["bench viewers"] = time.process_time() - me
                bare_port = free_port()
                bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port), str(size)], stdout=subprocess.PIPE)
                assert bare.stdout is not None and bare.stdout.readline().strip() == b"ready"
                bare_latencies = asyncio.run(bare_run(f"ws://127.0.0.1:{bare_port}", args.viewers, args.seconds))
                bare.terminate()
                bare.wait()
                stalled = asyncio.run(board_run(base, rurl, event_id, key, args.viewers, args.rate, args.seconds, stalled=True, per_post=args.per_post))
            finally:
                for proc in (worker, web, bare):
                    if proc is not None and proc.poll() is None:
                        proc.terminate()
                        proc.wait()
    b, s, r = board["latencies"], stalled["latencies"], bare_latencies
    print(f"board: {args.viewers:,} viewers, {args.rate:,} comments/s ({args.per_post} a post) for {args.seconds:.0f} s ({board['sent']:,} sent),"
          f" snapshots every {TICK} s")
    print(f"  {'':34} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"  {'ack -> viewer (board)':34} {statistics.median(b) * 1000:>8.1f} {p99(b) * 1000:>8.1f}")
    each = board["each"]
    print(f"  {'ack -> first viewer message with it':34} {statistics.median(each) * 1000:>8.1f} {p99(each) * 1000:>8.1f}"
          f"   (every comment, the wait for the publisher's next round included: p99 {p99(each) / p99(r):.2f}x the bare)")
    pub = board["published"]
    print(f"  {'  of which ack -> published':34} {statistics.median(pub) * 1000:>8.1f} {p99(pub) * 1000:>8.1f}"
          "   (the worker's part: a subscriber beside the web process)")
    print(f"  {'send -> viewer (bare broadcast)':34} {statistics.median(r) * 1000:>8.1f} {p99(r) * 1000:>8.1f}")
    print(f"  {'ack -> viewer, one viewer stalled':34} {statistics.median(s) * 1000:>8.1f} {p99(s) * 1000:>8.1f}")
    print(f"  board p99 ÷ bare p99: {p99(b) / p99(r):.2f} (target ≤ 1.5)  {'ok' if p99(b) <= 1.5 * p99(r) else 'MISSES'}")
    print(f"  stalled viewer: others' p99 {p99(s) / p99(b):.2f}x (target ≤ 1.2)  {'ok' if p99(s) <= 1.2 * p99(b) else 'MISSES'}")
    print(f"  message sizes: the whole snapshot {board['whole']:,} bytes (what the bare broadcast sends each time), "
          f"then patches of the parts that changed: median {board['size']:,.0f} bytes")
    print(f"  snapshots per viewer: {board['messages']:.0f} on average, fewest {board['fewest']} (a viewer with fewer skipped ahead; "
          f"none is ever queued more than the latest)")
    print("  (latency runs from the HTTP answer; the count is raised inside the same script that acknowledges, so a viewer can see it first: "
          "those count as 0)")
    print("  CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in used.items()))


if __name__ == "__main__":
    main()
