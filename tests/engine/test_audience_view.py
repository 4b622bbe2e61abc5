"""`orchestrator audience EVENT`: who gets what through which channel, and who is left out and why."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine, insert

from orchestrator import scheduling
from orchestrator.cli import cli
from orchestrator.errors import UnknownEvent
from orchestrator.settings import Settings
from orchestrator.store import OptOut
from tests.engine.conftest import arq_pool
from tests.engine.eventfiles import EventFiles, Person, crowd
from tests.engine.receiver import Receiver

OPTOUT = OptOut.__table__  # type: ignore[attr-defined]


def test_the_audience_view_names_each_persons_channel_or_reason(
        tmp_path: Path, engine: Engine, redis_url: str, database_url: str, receiver: Receiver, make_settings: Callable[..., Settings]) -> None:
    sms = crowd(4, sms=True)
    mail_only = [Person("e001", "邮件甲", "", "e1@example.com", mail=True)]
    no_consent = [Person("n001", "未同意", "13900000009", "n1@example.com")]
    opted = Person("o001", "退订甲", "13700000001", "O1@Example.com", sms=True, mail=True)  # sms by phone opted out: e-mail instead
    staff = [Person("s001", "员工甲", "13600000001", "s1@example.com", sms=True, mail=True)]
    files = EventFiles(people=sms + mail_only + no_consent + [opted], staff=staff)
    settings = make_settings(receiver)

    async def go() -> str:
        async with arq_pool(redis_url) as pool:
            return (await scheduling.schedule(engine, pool, settings, files.write(tmp_path / "event"))).event_id
    event_id = asyncio.run(go())
    with engine.begin() as conn:
        conn.execute(insert(OPTOUT), [{"member_id": None, "address": "13700000001", "channel": "sms", "source": "sms-reply",
                                       "at": datetime.now(timezone.utc)}])
    env = {"DATABASE_URL": database_url, "ORCH_WEBHOOK_URL": receiver.url, "ORCH_WEBHOOK_SECRET": receiver.secret,
           "ORCH_ROUTES": "sms=webhook,email=webhook", "ORCH_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    out = runner.invoke(cli, ["audience", event_id, "--json", "--csv", str(tmp_path / "who.csv")], env=env)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    hour = next(s for s in data["steps"] if s["step"] == "reminder:hour")
    assert hour["channels"] == {"sms": 4, "email": 2} and hour["transports"] == {"sms": "webhook", "email": "webhook"}
    assert hour["left_out"] == {"excluded": 1, "no_consent": 1}
    who = {(p["step"], p["member"]): (p["channel"], p["reason"]) for p in data["people"]}
    assert who[("reminder:hour", "o001")] == ("email", None), "opted out of sms by phone: reached by e-mail"
    assert who[("reminder:hour", "n001")] == (None, "no_consent") and who[("reminder:hour", "s001")] == (None, "excluded")
    rows = list(csv.DictReader((tmp_path / "who.csv").read_text(encoding="utf-8-sig").splitlines()))
    assert {(r["step"], r["member"], r["channel"], r["reason"]) for r in rows} >= {("preview", "m000001", "sms", ""), ("preview", "n001", "", "no_consent")}
    table = runner.invoke(cli, ["audience", event_id, "--step", "reminder:hour"], env=env)
    assert table.exit_code == 0 and "4 sms → webhook" in table.stdout and "1 " in table.stdout, table.output
    wrong = runner.invoke(cli, ["audience", event_id, "--step", "reminder:nope"], env=env)
    assert wrong.exit_code != 0 and "reminder:hour" in wrong.output, "a wrong step names the event's steps"
    unknown = runner.invoke(cli, ["audience", "no-such-event"], env=env)
    assert isinstance(unknown.exception, UnknownEvent) and "no-such-event" in str(unknown.exception), "main() prints it as a clear error"
