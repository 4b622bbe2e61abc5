"""Message catalog: every user-facing sentence goes through `_()`.

English is the source language; Chinese lives in `locale/zh_CN/LC_MESSAGES/orchestrator.po`
(compiled to `.mo`, both shipped in the package). The language follows `--lang`, else the
locale (`LANGUAGE`, `LC_ALL`, `LC_MESSAGES`, `LANG`), else English.
"""

from __future__ import annotations

import gettext
import os
from collections.abc import Mapping
from pathlib import Path

DOMAIN = "orchestrator"
LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "zh")

_translation: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def language_from_env(environ: Mapping[str, str] = os.environ) -> str:
    """The language the locale asks for: 'zh' for any Chinese locale, else 'en'."""
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(name, "")
        if value:
            first = value.split(":")[0].lower()
            return "zh" if first.startswith("zh") else "en"
    return "en"


def set_language(lang: str) -> None:
    """Switch every later `_()` to `lang` ('en' or 'zh')."""
    global _translation, _language
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r} is not one of {', '.join(LANGUAGES)}")
    _language = lang
    if lang == "en":
        _translation = gettext.NullTranslations()
    else:
        _translation = gettext.translation(DOMAIN, LOCALE_DIR, languages=["zh_CN"], fallback=True)


def current_language() -> str:
    """The language `_()` speaks now."""
    return _language


def _(message: str) -> str:
    """Translate one message (placeholders are filled by the caller with `.format`)."""
    return _translation.gettext(message)


def N_(message: str) -> str:
    """Mark a message for the catalog without translating it yet (translated where shown)."""
    return message
