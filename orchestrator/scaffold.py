"""`orchestrator init`: a new playbook folder from a starter template.

Starters live in `orchestrator/starters/<template>/` (package data). Text files may hold
placeholders filled at init time, so a fresh folder validates as it is:

    @LIVE_DATE@       the live's date, YYYY-MM-DD: the first Saturday at least 14 days away
    @LIVE_DATE_TEXT@  the same date as managers write it, e.g. 3月20日（周六）
    @EVENT_ID@        the folder's name when it is a valid id, else the template's default

CSV files are written UTF-8 with a BOM, as Excel saves them, so they open cleanly in Excel.
The playbook's JSON Schema is written beside it for editors (docs/schema.md).
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from orchestrator.copytext import WEEKDAYS_ZH
from orchestrator.errors import OrchestratorError
from orchestrator.i18n import _
from orchestrator.playbook import SLUG
from orchestrator.schema import playbook_schema

TEMPLATES = {"spring": "spring-live", "flash": "flash-sale"}  # template -> default event id
PLAYBOOK = "playbook.yaml"
SCHEMA = "playbook.schema.json"
BOM = b"\xef\xbb\xbf"
TEXT_SUFFIXES = {".yaml", ".yml", ".csv", ".txt", ".html", ".md", ".j2"}
LEAD_DAYS = 14
SATURDAY = 5


def live_date(today: date) -> date:
    """The first Saturday at least two weeks after `today`."""
    first = today + timedelta(days=LEAD_DAYS)
    return first + timedelta(days=(SATURDAY - first.weekday()) % 7)


def scaffold(directory: Path, template: str, *, force: bool = False, today: date | None = None) -> list[Path]:
    """Write starter `template` into `directory`; the written paths, playbook.yaml first.

    Refuses a directory that already has files unless `force` (then starter files overwrite
    files of the same name; other files are left alone).
    """
    if template not in TEMPLATES:
        raise OrchestratorError(_("unknown template '{name}'; choose one of: {known}").format(
            name=template, known=", ".join(sorted(TEMPLATES))))
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OrchestratorError(_("{path} is a file, not a folder").format(path=directory))
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise OrchestratorError(_("{path} is not empty; choose a new folder or pass --force to write the template into it").format(path=directory))
    day = live_date(today or date.today())
    name = directory.resolve().name
    values = {
        "@LIVE_DATE@": day.isoformat(),
        "@LIVE_DATE_TEXT@": f"{day.month}月{day.day}日（周{WEEKDAYS_ZH[day.weekday()]}）",
        "@EVENT_ID@": name if re.match(SLUG, name) else TEMPLATES[template],
    }
    written: list[Path] = []
    for rel, source in _files(resources.files("orchestrator") / "starters" / template):
        target = directory.joinpath(*rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_fill(source.read_bytes(), target.suffix.lower(), values))
        written.append(target)
    schema = directory / SCHEMA
    schema.write_text(json.dumps(playbook_schema(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    written.append(schema)  # editors complete and check fields from it (the playbook's first line names it)
    written.sort(key=lambda p: (p.name != PLAYBOOK or p.parent != directory, str(p)))
    return written


def _files(root: Traversable, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Traversable]]:
    """Every file under `root` as (relative parts, file), skipping caches and hidden files."""
    out: list[tuple[tuple[str, ...], Traversable]] = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            out.extend(_files(entry, prefix + (entry.name,)))
        else:
            out.append((prefix + (entry.name,), entry))
    return out


def _fill(data: bytes, suffix: str, values: dict[str, str]) -> bytes:
    """Fill placeholders in text files; CSV files get Excel's BOM."""
    if suffix not in TEXT_SUFFIXES:
        return data
    text = data.decode("utf-8-sig")
    for key, value in values.items():
        text = text.replace(key, value)
    encoded = text.encode("utf-8")
    return BOM + encoded if suffix == ".csv" else encoded
