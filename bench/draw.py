"""How long a draw takes over 1,000,000 comments (and 1,000,000 deposits), against a plain baseline.

The store holds N comments of one event spread over the live (and N deposits); the engine's
screenshot draw freezes the screen at the committed moment (an indexed query for the last
`screen_size` comments), drops staff and earlier winners, hashes the entrants and draws; the deposit
draw reads every deposit and refund. The baseline does the same selection with Python on lists
already in memory (the last comments by time, a set, random.sample), which is as cheap as a draw
can be. Median of 5 runs each; the target is engine ÷ baseline ≤ 3 (../shared/PERFORMANCE.md).

    python bench/draw.py [--comments 1000000] [--database sqlite|postgresql://...]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the test suite's playbook maker, run from anywhere

from sqlalchemy import insert, text  # noqa: E402

from orchestrator import draws  # noqa: E402
from orchestrator.store import Comment, Draw, Payment, open_store, utc_now  # noqa: E402
from tests.engine.eventfiles import EventFiles, crowd  # noqa: E402

CST = timezone(timedelta(hours=8))
HOUR = datetime(2027, 6, 10, 20, tzinfo=CST)


def schedule(url: str, folder: Path) -> str:
    import asyncio

    from orchestrator import scheduling
    from orchestrator.embedded_redis import redis_url
    from orchestrator.settings import Settings
    from orchestrator.worker import pool_for

    path = EventFiles(people=crowd(2), draws="  screenshot_draw: {winners_per_draw: 3, screen_size: 500, prize: cup}\n"
                      "  deposit_draw: {products: [{id: sofa, name: 沙发, deposit_cny: 100}], winners: 3, prize: cup, pools: single, "
                      "cutoff: '2027-06-10 20:30'}").write(folder / "event")
    settings = Settings.from_env({"DATABASE_URL": url, "ORCH_DATA_DIR": str(folder / "data"), "ORCH_ROUTES": "sms=console,email=console"},
                                 env_file=None)
    engine = open_store(url)
    with redis_url(None, folder / "redis") as rurl:
        async def go() -> str:
            pool = await pool_for(rurl)
            try:
                return (await scheduling.schedule(engine, pool, settings, path)).event_id
            finally:
                await pool.aclose()
        return asyncio.run(go())


def fill(url: str, event_id: str, n: int) -> tuple[list[tuple[str, datetime]], list[tuple[str, str, str, datetime]]]:
    """N comments over the live's first hour and N deposits (a tenth refunded); the same data in memory."""
    engine = open_store(url)
    start = HOUR - timedelta(hours=1)
    now = utc_now()
    comments, payments = [], []
    rng = random.Random(7)
    for i in range(n):
        comments.append((f"u{rng.randrange(n // 5)}", start + timedelta(microseconds=int(i * 3.6e9 / n))))
        payments.append((f"o{i}", f"b{rng.randrange(n // 2)}", "refund" if i % 10 == 0 else "deposit", start + timedelta(seconds=i % 5400)))
    chunk = 20_000
    with engine.begin() as conn:
        for i in range(0, n, chunk):
            conn.execute(insert(Comment.__table__), [  # type: ignore[attr-defined]
                {"event_id": event_id, "source": "bench", "message_id": f"m{j}", "platform": "other", "room": "", "user_id": u, "name": u,
                 "text": "焕新", "at": at, "received_at": now} for j, (u, at) in enumerate(comments[i:i + chunk], i)])
            conn.execute(insert(Payment.__table__), [  # type: ignore[attr-defined]
                {"event_id": event_id, "source": "bench", "payment_id": f"p{j}", "kind": "deposit", "order_id": o, "person": p,
                 "product": "sofa", "amount_fen": 10000, "at": at, "received_at": now} for j, (o, p, _k, at) in enumerate(payments[i:i + chunk], i)])
            conn.execute(insert(Payment.__table__), [  # type: ignore[attr-defined]
                {"event_id": event_id, "source": "bench", "payment_id": f"r{j}", "kind": "refund", "order_id": o, "person": p,
                 "product": None, "amount_fen": 10000, "at": at, "received_at": now}
                for j, (o, p, k, at) in enumerate(payments[i:i + chunk], i) if k == "refund"])
    with engine.begin() as conn:  # what autovacuum (PostgreSQL) or a long-lived connection would have done by the draw
        conn.execute(text("ANALYZE"))
    engine.dispose()
    return comments, payments


def timed(fn: Any, runs: int = 5) -> float:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--comments", type=int, default=1_000_000)
    parser.add_argument("--database", default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="draw-") as tmp:
        folder = Path(tmp)
        url = f"sqlite:///{folder / 'bench.db'}" if args.database == "sqlite" else args.database
        if url.startswith("postgresql"):
            engine = open_store(url)
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
            engine.dispose()
        event_id = schedule(url, folder)
        t = time.perf_counter()
        comments, payments = fill(url, event_id, args.comments)
        filled = time.perf_counter() - t
        engine = open_store(url)
        from orchestrator.scheduling import get_event, loaded_event

        loaded = loaded_event(engine, get_event(engine, event_id), members=False)
        screen = loaded.playbook.mechanism.screenshot_draw.screen_size  # type: ignore[union-attr]
        freeze_at, _ = draws.freeze_moment(engine, event_id, "bench", HOUR)
        cutoff = datetime(2027, 6, 10, 20, 30, tzinfo=CST)

        def engine_screenshot() -> None:
            with engine.begin() as conn:
                conn.execute(Draw.__table__.delete())  # type: ignore[attr-defined]
            draws.screenshot_draw(engine, event_id, "draw:screenshot:1", HOUR, loaded)

        def engine_deposit() -> None:
            with engine.begin() as conn:
                conn.execute(Draw.__table__.delete())  # type: ignore[attr-defined]
            draws.deposit_draws(engine, event_id, loaded, cutoff)

        def base_screenshot() -> None:
            last = [u for u, at in comments if at <= freeze_at][-screen:]
            random.sample(sorted(set(last)), 3)

        def base_deposit() -> None:
            refunded = {o for o, _p, k, _at in payments if k == "refund"}
            people = {p for o, p, _k, at in payments if at <= cutoff and o not in refunded}
            random.sample(sorted(people), 3)

        rows = [("screenshot draw", timed(engine_screenshot), timed(base_screenshot)),
                ("deposit draw", timed(engine_deposit), timed(base_deposit))]
        engine.dispose()
    print(f"draws over {args.comments:,} comments and {args.comments:,} deposits ({'SQLite' if args.database == 'sqlite' else 'PostgreSQL'}; "
          f"stored in {filled:.0f} s), median of 5")
    print(f"  {'':16} {'engine ms':>10} {'baseline ms':>12} {'ratio':>7}")
    for name, mine, base in rows:
        ratio = mine / base
        print(f"  {name:16} {mine * 1000:>10.1f} {base * 1000:>12.1f} {ratio:>7.2f}  (target ≤ 3)  {'ok' if ratio <= 3 else 'MISSES'}")


if __name__ == "__main__":
    main()
