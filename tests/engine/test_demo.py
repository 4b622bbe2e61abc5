"""The README's demo command: a whole event rehearsed on embedded defaults, shown as it happens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.engine.test_pool import free_port


def test_the_demo_runs_an_event_to_its_report_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "ORCH_DATA_DIR", "ORCH_ROUTES", "ORCH_WEBHOOK_URL")}
    env |= {"ORCH_LANG": "en", "COLUMNS": "160"}
    port = free_port()
    lines, fetched = [], {}
    with subprocess.Popen([sys.executable, "-c", "from orchestrator.cli import main; main()", "demo", "--seconds", "12", "--port", str(port)],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # the web app runs beside the worker while the demo does: look at it then
            lines.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+/posters/\S+/[\w-]+)", line)
            if found and "posters" not in fetched:
                with urllib.request.urlopen(found.group(1).rstrip(";"), timeout=10) as r:
                    fetched["posters"] = r.read().decode()
        assert proc.wait(300) == 0, "".join(lines)[-2000:]
    out = "".join(lines)
    assert f"web: http://127.0.0.1:{port}" in out
    did = re.search(r"rehearsal audience did: (.*)", out)
    assert did and " scan" in did.group(1) and "failed" not in did.group(1), out[-2000:]
    guides = len((tmp_path / "demo-event" / "guides.csv").read_text(encoding="utf-8-sig").strip().splitlines()) - 1
    assert fetched["posters"].count("<img ") == guides * 2 >= 4  # each guide x 2 hook variants, served by the demo's web app
    for seen in ("reminder:day-before", "reminder:hour", "live starts", "host cue:", "event closed", "report: file://"):
        assert seen in out, f"{seen!r} missing from the demo's output"
    assert (tmp_path / "orchestrator.db").exists() and (tmp_path / "demo-event" / "playbook.yaml").exists()
    reports = list((tmp_path / ".orchestrator" / "reports").glob("*-report.html"))
    assert len(reports) == 1 and "reminder:hour" in reports[0].read_text(encoding="utf-8")
    console_log = next((tmp_path / ".orchestrator" / "console").glob("*.jsonl")).read_text(encoding="utf-8").splitlines()
    assert console_log and all('"key"' in line for line in console_log)
    assert not (tmp_path / ".orchestrator" / "redis" / "port").exists(), "the embedded Redis was stopped"


def test_a_rehearsal_with_fake_platforms_sends_through_the_real_clients(tmp_path: Path) -> None:
    """`--fake-platforms`: SMS, e-mail and WeCom tasks leave through our real transports for local fakes, which say what they got."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "ORCH_DATA_DIR", "ORCH_ROUTES", "ORCH_WEBHOOK_URL")}
    env |= {"ORCH_LANG": "en", "COLUMNS": "160"}
    done = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "demo", "--seconds", "12", "--port", str(free_port()),
                           "--fake-platforms"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    assert "email → smtp, sms → aliyun_sms, wecom_customer → wecom_tasks" in out
    sms = re.search(r"Aliyun SMS \(fake\): (\d+) messages to (\d+) numbers", out)
    mail = re.search(r"SMTP \(fake\): (\d+) e-mails", out)
    wecom = re.search(r"WeCom \(fake\): (\d+) mass-message tasks, (\d+) confirmed by their guides", out)
    assert sms and mail and wecom, out[-2000:]
    assert int(sms.group(1)) > 0 and int(mail.group(1)) > 0 and int(wecom.group(1)) > 0
    assert wecom.group(1) == wecom.group(2), "every task was confirmed by its (fake) guide"
    pushed = re.search(r"(\d+) pushes of delivery receipts taken by the web app", out)
    assert pushed and int(pushed.group(1)) > 0, out[-2000:]
    import csv

    sends = next((tmp_path / ".orchestrator" / "reports").glob("*-sends.csv"))
    with sends.open(encoding="utf-8-sig", newline="") as fh:
        delivered = sum(int(r["sms_delivered"] or 0) for r in csv.DictReader(fh))
    assert delivered > 0, "the receipts the fake Aliyun pushed show in the report: the SMS reached the phone"
    console_log = next((tmp_path / ".orchestrator" / "console").glob("*.jsonl")).read_text(encoding="utf-8")
    assert '"channel": "sms"' not in console_log and '"channel":"sms"' not in console_log, "no SMS went to the console log"
