"""Opt-outs through the API: global, matched by member or address, recorded once; bad input stores nothing."""

from __future__ import annotations

import json
from collections.abc import Callable

from click.testing import CliRunner

from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from orchestrator.cli import cli
from orchestrator.eligibility import optouts_of
from orchestrator.playbook import Member
from orchestrator.settings import Settings
from orchestrator.store import OptOut
from web.app import create_app

OPTOUT = OptOut.__table__  # type: ignore[attr-defined]
TOKEN = {"Authorization": "Bearer tok"}


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(OPTOUT)).scalar_one())


def test_opt_outs_posted_block_the_next_send_by_member_or_address(engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    ann = Member("m1", "安", "all", phone="13900000001", email="An@Example.com")
    bo = Member("m2", "博", "all", phone="13900000002", email="bo@example.com")
    with TestClient(create_app(make_settings(REDIS_URL=redis_url, ORCH_API_TOKEN="tok"))) as web:
        first = web.post("/api/optouts", headers=TOKEN, json={"optouts": [
            {"member": "m1", "channel": "sms"}, {"address": " AN@example.COM ", "channel": "email"}, {"address": "13900000002"}]})
        assert first.status_code == 200 and first.json() == {"recorded": 3, "already": 0}
        again = web.post("/api/optouts", headers=TOKEN, json={"member": "m1", "channel": "sms"})
        assert again.json() == {"recorded": 0, "already": 1}, "the same opt-out twice is recorded once"
        covered = web.post("/api/optouts", headers=TOKEN, json={"address": "13900000002", "channel": "sms"})
        assert covered.json() == {"recorded": 0, "already": 1}, "an opt-out from every channel covers each one"
    blocks = optouts_of(engine, [ann, bo])
    assert blocks.blocks(ann, "sms") and blocks.blocks(ann, "email") and not blocks.blocks(ann, "wecom_customer")
    assert blocks.blocks(bo, "sms") and blocks.blocks(bo, "email") and blocks.blocks(bo, "wecom_customer")
    with engine.connect() as conn:
        sources = {s for (s,) in conn.execute(select(OPTOUT.c.source))}
        addresses = {a for (a,) in conn.execute(select(OPTOUT.c.address)) if a}
    assert sources == {"api"} and addresses == {"an@example.com", "13900000002"}, "kept lower-cased, with their source"


def test_bad_opt_outs_are_refused_with_what_and_where_and_store_nothing(
        engine: Engine, redis_url: str, make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings(REDIS_URL=redis_url, ORCH_API_TOKEN="tok"))) as web:
        assert web.post("/api/optouts", json={"member": "m1"}).status_code == 401
        assert web.post("/api/optouts", headers={"Authorization": "Bearer nope"}, json={"member": "m1"}).status_code == 401
        not_json = web.post("/api/optouts", headers={**TOKEN, "Content-Type": "application/json"}, content=b"{nope")
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
        cases = [
            ({"optouts": [{"member": "m1"}, {"member": "m2", "channel": "fax"}]}, "optouts[1].channel", "'fax'"),
            ({"optouts": [{"member": "m1", "address": "a@b.c"}]}, "optouts[0]", "exactly one"),
            ({"optouts": [{}]}, "optouts[0]", "exactly one"),
            ({"optouts": [{"member": "  "}]}, "optouts[0].member", "non-empty"),
            ({"optouts": [{"member": "m1", "why": "spam"}]}, "optouts[0]", "unknown field 'why'"),
            ({"optouts": ["m1"]}, "optouts[0]", "an object"),
            ({"optouts": []}, None, "at least one"),
        ]
        for body, at, words in cases:
            r = web.post("/api/optouts", headers=TOKEN, json=body)
            assert r.status_code == 422 and words in r.json()["error"] and r.json().get("at") == at, (body, r.json())
    assert stored(engine) == 0, "a batch with one bad item stores none of it"


def test_the_console_records_an_opt_out_normalised_and_lists_every_source(engine: Engine, database_url: str) -> None:
    env = {"DATABASE_URL": database_url}
    runner = CliRunner()
    first = runner.invoke(cli, ["--lang", "en", "optout", "add", "--address", "+86 139 0000 0003", "--channel", "sms"], env=env)
    assert first.exit_code == 0 and "opt-out recorded: 13900000003 gets nothing through sms" in first.output, first.output
    again = runner.invoke(cli, ["--lang", "en", "optout", "add", "--address", "13900000003", "--channel", "sms"], env=env)
    assert again.exit_code == 0 and "had already opted out of sms: nothing changed" in again.output
    assert runner.invoke(cli, ["--lang", "en", "optout", "add", "--member", "m7"], env=env).exit_code == 0
    cai = Member("m3", "蔡", "all", phone="13900000003")
    assert optouts_of(engine, [cai]).blocks(cai, "sms") and not optouts_of(engine, [cai]).blocks(cai, "email"), "matched like a member's number"
    listed = runner.invoke(cli, ["--lang", "en", "optout", "list", "--json"], env=env)
    rows = json.loads(listed.output)
    assert [(r["member"], r["address"], r["channel"], r["source"]) for r in rows] == [("m7", None, "*", "console"), (None, "13900000003", "sms", "console")]
    for args, words in [(["--member", "m1", "--address", "13900000001"], "exactly one of 'member'"), ([], "exactly one of 'member'"),
                        (["--member", "m1", "--channel", "fax"], "'channel' 'fax' is not one of")]:
        bad = runner.invoke(cli, ["--lang", "en", "optout", "add", *args], env=env)
        assert bad.exit_code == 2 and words in bad.output and "Traceback" not in bad.output, bad.output
    assert stored(engine) == 2, "a refused opt-out stores nothing"
