"""The send ledger's own rules, on the real database: claims go on from a cursor, caps are counted
from the rows themselves, and the migration that moved the counts onto the rows keeps them."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, create_engine, select, text, update

from orchestrator import ledger
from orchestrator.ledger import Result
from orchestrator.store import Claimer, Event, Send, make_engine, migrate, open_store, utc_now

pytestmark = pytest.mark.db
SEND = Send.__table__  # type: ignore[attr-defined]
EVENT = Event.__table__  # type: ignore[attr-defined]
NOW = datetime(2027, 3, 20, 12, 0, tzinfo=timezone.utc)


def add_event(engine: Engine, event_id: str, tz: str = "Asia/Shanghai") -> None:
    with engine.begin() as conn:
        conn.execute(EVENT.insert().values(id=event_id, playbook_id="p", title="t", entry="e.yaml", playbook_hash="h", timezone=tz,
                                           live_start=NOW, live_end=NOW, created_at=NOW, updated_at=NOW))


def set_states(engine: Engine, event_id: str, states: dict[str, str]) -> None:
    with engine.begin() as conn:
        for member_id, state in states.items():
            conn.execute(update(SEND).where(SEND.c.event_id == event_id, SEND.c.member_id == member_id).values(state=state))


def test_a_claim_goes_on_from_its_cursor_and_a_row_planned_again_behind_it_is_taken_from_the_start(engine: Engine) -> None:
    add_event(engine, "ev")
    ledger.plan_sends(engine, "ev", "reminder:a", [(f"m{i:03d}", "webhook", "webhook") for i in range(10)])
    first = ledger.claim(engine, "ev", "reminder:a", "w1", 4)
    assert [c.member_id for c in first] == ["m000", "m001", "m002", "m003"]
    second = ledger.claim(engine, "ev", "reminder:a", "w1", 4, after=first[-1].id)
    assert [c.member_id for c in second] == ["m004", "m005", "m006", "m007"]
    # a row of the first batch comes back (given back: planned again), behind the cursor
    assert ledger.give_back(engine, "w1", "ev", [first[1].id]) == 1
    third = ledger.claim(engine, "ev", "reminder:a", "w1", 4, after=second[-1].id)
    assert [c.member_id for c in third] == ["m008", "m009"], "the cursor's claim goes on where it was"
    assert ledger.claim(engine, "ev", "reminder:a", "w1", 4, after=third[-1].id) == []
    again = ledger.claim(engine, "ev", "reminder:a", "w2", 4)
    assert [c.member_id for c in again] == ["m001"], "a claim from the start takes the row planned again"


def test_caps_are_counted_from_the_rows_by_their_day_and_state(engine: Engine) -> None:
    add_event(engine, "a")
    add_event(engine, "b")
    people = ["ann", "bob", "cat", "dan", "eve", "fay"]
    ledger.plan_sends(engine, "a", "preview", [(p, "sms", "webhook") for p in people], count_day="2027-03-19")
    ledger.plan_sends(engine, "b", "reminder:soon", [(p, "sms", "webhook") for p in people], count_day="2027-03-20")
    ledger.plan_sends(engine, "b", "reminder:soon", [(p, "wecom_group", "webhook") for p in people])  # posts into groups: no count day
    ledger.plan_sends(engine, "b", "reminder:later", [(p, "email", "webhook") for p in people], count_day="2027-04-01")  # next month
    set_states(engine, "a", {"ann": "sent", "bob": "created", "cat": "unknown", "dan": "failed", "eve": "skipped"})  # fay: still planned
    set_states(engine, "b", dict.fromkeys(people, "sent"))
    counts = ledger.counts_of(engine, people, ("d:2027-03-20", "m:2027-03"))
    # the day: event b's reminder to each; the month: that, plus event a's preview where it may have reached them
    assert counts == {("ann", "d:2027-03-20"): 1, ("ann", "m:2027-03"): 2, ("bob", "d:2027-03-20"): 1, ("bob", "m:2027-03"): 2,
                      ("cat", "d:2027-03-20"): 1, ("cat", "m:2027-03"): 2, ("dan", "d:2027-03-20"): 1, ("dan", "m:2027-03"): 1,
                      ("eve", "d:2027-03-20"): 1, ("eve", "m:2027-03"): 1, ("fay", "d:2027-03-20"): 1, ("fay", "m:2027-03"): 1}
    assert ledger.counts_of(engine, ["ann", "nobody"], ("d:2027-03-19", "m:2027-03")) == {("ann", "d:2027-03-19"): 1, ("ann", "m:2027-03"): 2}
    assert ledger.counts_of(engine, ["ann"], ("d:2027-02-19", "m:2027-02")) == {}
    assert ledger.counts_of(engine, [], ("d:2027-03-20", "m:2027-03")) == {}


def test_an_outcome_recorded_as_unknown_by_the_orphan_sweep_counts_toward_caps(engine: Engine) -> None:
    add_event(engine, "ev")
    ledger.plan_sends(engine, "ev", "reminder:a", [("ann", "sms", "sms"), ("bob", "webhook", "webhook")], count_day="2027-03-20")
    claimed = ledger.claim(engine, "ev", "reminder:a", "gone", 10)
    with engine.begin() as conn:  # claimed a minute ago by a worker that is gone
        conn.execute(update(SEND).values(claimed_at=utc_now() - timedelta(minutes=1)))
    assert len(claimed) == 2
    assert ledger.resolve_orphans(engine, set(), {"sms": False, "webhook": True}) == {("ev", "reminder:a"): (1, 1)}
    assert ledger.counts_of(engine, ["ann", "bob"], ("d:2027-03-20", "m:2027-03")) == {("ann", "d:2027-03-20"): 1, ("ann", "m:2027-03"): 1}
    bob = ledger.claim(engine, "ev", "reminder:a", "w2", 10)
    assert ledger.finish(engine, "w2", [Result(bob[0].id, "sent")]) == 1
    assert ledger.counts_of(engine, ["bob"], ("d:2027-03-20", "m:2027-03")) == {("bob", "d:2027-03-20"): 1, ("bob", "m:2027-03"): 1}


def test_the_migration_moves_the_stored_counts_onto_the_rows_and_back(database_url: str) -> None:
    """0016 gives each preview and reminder row its step's day in the event's timezone (13:00 UTC on
    the 19th is the 19th in Shanghai, 23:30 UTC is the 20th), so the counts read from the rows are
    the counts the dropped table held; going back rebuilds the table from the rows."""
    engine = make_engine(database_url)
    try:
        migrate(engine, "0015")
        add_event(engine, "ev")
        with engine.begin() as conn:
            for step_id, stage, at in (("preview", "preview", "2027-03-19 13:00:00"), ("reminder:late", "reminder", "2027-03-19 23:30:00"),
                                       ("poster", "poster", "2027-03-19 01:00:00")):
                conn.execute(text("INSERT INTO step (event_id, step_id, stage, label, at, state, revision, audience) "
                                  "VALUES ('ev', :s, :g, '', :at, 'done', 1, 0)"), {"s": step_id, "g": stage, "at": at})
            rows = [("preview", "ann", "sms", "sent"), ("preview", "bob", "sms", "failed"), ("reminder:late", "ann", "sms", "unknown"),
                    ("reminder:late", "g1", "wecom_group", "sent"), ("poster", "guide:g1", "wecom_customer", "sent")]
            for step_id, member_id, channel, state in rows:
                conn.execute(text("INSERT INTO send (event_id, step_id, member_id, channel, transport, state, attempts, retried, idempotency_key) "
                                  "VALUES ('ev', :s, :m, :c, 'webhook', :st, 1, false, :k)"),
                             {"s": step_id, "m": member_id, "c": channel, "st": state, "k": f"ev:{step_id}:{member_id}:{channel}"})
            conn.execute(text("INSERT INTO sendcount (member_id, period, count) VALUES "
                              "('ann', 'd:2027-03-19', 1), ('ann', 'd:2027-03-20', 1), ('ann', 'm:2027-03', 2)"))
        migrate(engine)
        with engine.connect() as conn:
            days = {(r.step_id, r.member_id): r.count_day for r in conn.execute(select(SEND.c.step_id, SEND.c.member_id, SEND.c.count_day))}
            tables = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'") if engine.dialect.name == "sqlite" else
                                      text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        assert days == {("preview", "ann"): "2027-03-19", ("preview", "bob"): "2027-03-19", ("reminder:late", "ann"): "2027-03-20",
                        ("reminder:late", "g1"): None, ("poster", "guide:g1"): None}
        assert "sendcount" not in tables
        assert ledger.counts_of(engine, ["ann", "bob"], ("d:2027-03-20", "m:2027-03")) == {("ann", "d:2027-03-20"): 1, ("ann", "m:2027-03"): 2}
        assert ledger.counts_of(engine, ["ann"], ("d:2027-03-19", "m:2027-03")) == {("ann", "d:2027-03-19"): 1, ("ann", "m:2027-03"): 2}
        downgrade(engine, "0015")
        with engine.connect() as conn:
            back = {tuple(r) for r in conn.execute(text("SELECT member_id, period, count FROM sendcount"))}
        assert back == {("ann", "d:2027-03-19", 1), ("ann", "d:2027-03-20", 1), ("ann", "m:2027-03", 2)}
    finally:
        engine.dispose()


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from orchestrator.store import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_open_rows_counts_a_row_going_back_and_forth_between_planned_and_sending_once(engine: Engine) -> None:
    """A drain closes its step when `open_rows` finds nothing planned and nothing sending. A retry's
    row goes from sending back to planned while other lanes look: counted in two reads, it could fall
    between them and be in neither, and the step was closed with the row still to send (seen in CI)."""
    import threading

    add_event(engine, "ev")
    ledger.plan_sends(engine, "ev", "reminder:a", [("m001", "webhook", "webhook")])
    stop = threading.Event()

    def flip() -> None:  # what claims and retries do to the row, as fast as the store lets them
        state = "planned"
        while not stop.is_set():
            state = "sending" if state == "planned" else "planned"
            with engine.begin() as conn:
                conn.execute(update(SEND).where(SEND.c.event_id == "ev").values(state=state))

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        seen = [ledger.open_rows(engine, "ev", "reminder:a")[:2] for _ in range(1500)]
    finally:
        stop.set()
        flipper.join()
    assert {planned + sending for planned, sending in seen} == {1}, "the one open row, counted once every time"
    assert {(1, 0), (0, 1)} <= set(seen), "the row was seen in both states (the flipper ran meanwhile)"


CLAIMER = Claimer.__table__  # type: ignore[attr-defined]


def claimers(engine: Engine) -> dict[str, bool]:
    with engine.connect() as conn:
        return {r.worker: r.dirty for r in conn.execute(select(CLAIMER.c.worker, CLAIMER.c.dirty))}


def test_the_orphan_sweep_finds_a_gone_workers_sends_by_its_claims_and_then_forgets_it(engine: Engine) -> None:
    add_event(engine, "ev")
    ledger.plan_sends(engine, "ev", "reminder:a", [(f"m{i}", "webhook", "webhook") for i in range(4)])
    gone = ledger.claim(engine, "ev", "reminder:a", "gone", 2)
    alive = ledger.claim(engine, "ev", "reminder:a", "alive", 1)
    assert len(gone) == 2 and len(alive) == 1 and claimers(engine) == {"gone": True, "alive": True}
    # claimed a moment ago: too soon to judge, and the gone worker stays to be looked at
    assert ledger.resolve_orphans(engine, {"alive"}, {"webhook": True}) == {}
    assert claimers(engine) == {"gone": True, "alive": True}
    with engine.begin() as conn:
        conn.execute(update(SEND).values(claimed_at=utc_now() - timedelta(minutes=1)))
    assert ledger.resolve_orphans(engine, {"alive"}, {"webhook": True}) == {("ev", "reminder:a"): (2, 0)}
    with engine.connect() as conn:
        states = {r.member_id: (r.state, r.retried) for r in conn.execute(select(SEND.c.member_id, SEND.c.state, SEND.c.retried))}
    assert states == {"m0": ("planned", True), "m1": ("planned", True), "m2": ("sending", False), "m3": ("planned", False)}
    assert claimers(engine) == {"gone": False, "alive": True}  # looked at: clean
    assert ledger.resolve_orphans(engine, {"alive"}, {"webhook": True}) == {}
    assert claimers(engine) == {"alive": True}  # gone and clean: forgotten
    # it was not gone after all: its next claim names it again, and its rows are found again
    again = ledger.claim(engine, "ev", "reminder:a", "gone", 10)
    assert {c.member_id for c in again} == {"m0", "m1", "m3"} and claimers(engine) == {"gone": True, "alive": True}
    with engine.begin() as conn:
        conn.execute(update(SEND).values(claimed_at=utc_now() - timedelta(minutes=1)))
    assert ledger.resolve_orphans(engine, {"alive"}, {"webhook": False}) == {("ev", "reminder:a"): (0, 3)}


# the columns a send's progress writes (claim, outcome, retry, orphan sweep); `awaiting` changes
# only on WeCom tasks, whose confirmation is rare next to a fan-out
PROGRESS = ("state", "attempts", "retried", "provider_id", "sender", "error", "claimed_by", "claim", "claimed_at", "not_before", "sent_at")


def test_no_index_of_the_send_table_names_a_column_a_sends_progress_writes(engine: Engine) -> None:
    """So that on PostgreSQL each step of a send is a heap-only (HOT) update: with `state` in a
    partial index's condition, every step wrote a new entry into each of the table's indexes."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            definitions = list(conn.execute(text("SELECT indexdef FROM pg_indexes WHERE tablename = 'send'")).scalars())
        else:
            definitions = [d for d in conn.execute(text("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'send'")).scalars() if d]
    assert any("ix_send_step" in d for d in definitions)
    for definition in definitions:
        named = set(re.findall(r"\w+", definition.split(" ON ", 1)[1].lower()))
        assert not named & set(PROGRESS), definition


def test_a_sends_claim_and_outcome_are_heap_only_updates_on_postgresql(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("HOT updates are PostgreSQL's")
    engine = open_store(database_url)
    one = create_engine(engine.url, pool_size=1, max_overflow=0)  # every call on one server process, whose counts we read
    try:
        add_event(one, "ev")
        ledger.plan_sends(one, "ev", "reminder:a", [(f"m{i:03d}", "webhook", "webhook") for i in range(400)])

        def updates() -> tuple[int, int]:
            with one.connect() as conn:
                conn.execute(text("SELECT pg_stat_force_next_flush()"))  # this process's counts reach the shared ones when it idles
                conn.commit()
                row = conn.execute(text("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'send'")).one()
            return int(row[0]), int(row[1])

        before = updates()
        claimed = ledger.claim(one, "ev", "reminder:a", "w1", 200) + ledger.claim(one, "ev", "reminder:a", "w1", 200, after=200)
        assert ledger.finish(one, "w1", [Result(c.id, "sent", provider_id=f"p{c.id}") for c in claimed]) == 400
        after = updates()
        changed, hot = after[0] - before[0], after[1] - before[1]
        assert changed == 800
        assert hot >= changed // 2, f"only {hot} of {changed} updates were heap-only"
    finally:
        one.dispose()
        engine.dispose()


def test_the_migration_to_heap_only_updates_keeps_tasks_awaiting_and_sends_in_flight_findable(database_url: str) -> None:
    """0017 drops the indexes on `state`: a WeCom task created before it still awaits its guide, and a
    send in flight before it is still found by the orphan sweep when its worker is gone."""
    engine = make_engine(database_url)
    try:
        migrate(engine, "0016")
        add_event(engine, "ev")
        with engine.begin() as conn:
            for member_id, state, worker in (("ann", "created", "w-old"), ("bob", "sending", "w-old"), ("cat", "sent", "w-old")):
                conn.execute(text("INSERT INTO send (event_id, step_id, member_id, channel, transport, state, attempts, retried, idempotency_key, "
                                  "claimed_by, claimed_at, provider_id) VALUES ('ev', 'reminder:a', :m, 'wecom_customer', 'wecom', :st, 1, false, :k, "
                                  ":w, :at, 'task-1')"),
                             {"m": member_id, "st": state, "k": f"ev:reminder:a:{member_id}:wecom_customer", "w": worker,
                              "at": (utc_now() - timedelta(minutes=1)).replace(tzinfo=None)})
        migrate(engine)
        assert [(m, s) for _i, m, s, _t in ledger.created_tasks(engine, "ev")] == [("ann", "reminder:a")]
        assert ledger.resolve_orphans(engine, set(), {"wecom": False}) == {("ev", "reminder:a"): (0, 1)}
        downgrade(engine, "0016")
        with engine.connect() as conn:
            states = dict(conn.execute(text("SELECT member_id, state FROM send")).all())
        assert states == {"ann": "created", "bob": "unknown", "cat": "sent"}
    finally:
        engine.dispose()
