"""The message catalog stays complete and compiled; Chinese appears when asked for."""

from __future__ import annotations

import gettext
import re
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.i18n import LOCALE_DIR, language_from_env

ROOT = Path(__file__).parents[2]
PO = LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "orchestrator.po"
MO = PO.with_suffix(".mo")
FIELD = re.compile(r"\{[a-z_]*[^}]*\}")


def _catalog():  # type: ignore[no-untyped-def]
    with PO.open("rb") as fh:
        return read_po(fh, locale="zh_CN")


def _extracted() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT / "orchestrator"), method_map=[("**.py", "python"), ("**/templates/**.j2", "jinja2")], keywords={"_": None, "N_": None}
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_message_has_a_chinese_translation() -> None:
    catalog = _catalog()
    missing = sorted(m for m in _extracted() if not (catalog.get(m) and catalog.get(m).string) or catalog.get(m).fuzzy)
    assert not missing, "untranslated (see docs/operations.md, Language):\n" + "\n".join(missing)


def test_translations_keep_their_placeholders() -> None:
    for message in _catalog():
        if message.id and message.string:
            assert sorted(FIELD.findall(str(message.id))) == sorted(FIELD.findall(str(message.string))), message.id


def test_compiled_catalog_is_current() -> None:
    with MO.open("rb") as fh:
        compiled = gettext.GNUTranslations(fh)._catalog  # type: ignore[attr-defined]
    wanted = {m.id: m.string for m in _catalog() if m.id and m.string and not m.fuzzy}
    stale = sorted(k for k, v in wanted.items() if compiled.get(k) != v)
    assert not stale, "orchestrator.mo is stale: run pybabel compile (docs/operations.md):\n" + "\n".join(stale)


def test_language_follows_the_locale() -> None:
    assert language_from_env({"LANG": "zh_CN.UTF-8"}) == "zh"
    assert language_from_env({"LANGUAGE": "en_US:zh_CN", "LANG": "zh_CN.UTF-8"}) == "en"
    assert language_from_env({}) == "en"


def test_validate_speaks_chinese_when_asked(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nid: x\ntitle: t\nplatfrom: 1\n", encoding="utf-8")
    zh = CliRunner().invoke(cli, ["--lang", "zh", "validate", str(broken)])
    en = CliRunner().invoke(cli, ["--lang", "en", "validate", str(broken)])
    assert zh.exit_code == en.exit_code == 1
    assert "unknown key 'platfrom'" in en.output
    assert "未知的键" in zh.output and "platfrom" in zh.output
