"""The README's demo command: a whole event rehearsed on embedded defaults, shown as it happens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_the_demo_runs_an_event_to_its_report_on_embedded_defaults(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "ORCH_DATA_DIR", "ORCH_ROUTES", "ORCH_WEBHOOK_URL")}
    env |= {"ORCH_LANG": "en", "COLUMNS": "160"}
    done = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", "demo", "--seconds", "12"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for seen in ("reminder:day-before", "reminder:hour", "live starts", "host cue:", "event closed", "report: file://"):
        assert seen in out, f"{seen!r} missing from the demo's output"
    assert (tmp_path / "orchestrator.db").exists() and (tmp_path / "demo-event" / "playbook.yaml").exists()
    reports = list((tmp_path / ".orchestrator" / "reports").glob("*-report.html"))
    assert len(reports) == 1 and "reminder:hour" in reports[0].read_text(encoding="utf-8")
    console_log = next((tmp_path / ".orchestrator" / "console").glob("*.jsonl")).read_text(encoding="utf-8").splitlines()
    assert console_log and all('"key"' in line for line in console_log)
    assert not (tmp_path / ".orchestrator" / "redis" / "port").exists(), "the embedded Redis was stopped"
