"""Settings from the environment (and an optional `.env` file beside the process).

Built once per entry point (CLI, web app, worker) and passed down; never read at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from dotenv import dotenv_values

from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    env: str
    default: str | None
    help: str


SETTINGS = (
    Setting("DATABASE_URL", "sqlite:///orchestrator.db", "SQLAlchemy URL of the database (PostgreSQL in production)"),
    Setting("REDIS_URL", None, "Redis URL; unset starts an embedded Redis for one-machine use"),
    Setting("ORCH_PUBLIC_URL", "http://127.0.0.1:8000", "base URL that poster QR codes and links carry"),
    Setting("ORCH_LANG", None, "language of messages, 'zh' or 'en'; unset follows the locale"),
)


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    public_url: str
    lang: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, env_file: str | Path | None = ".env") -> Settings:
        """Values from `environ` (default os.environ), falling back to `.env`, then defaults."""
        merged: dict[str, str | None] = {}
        if env_file is not None and Path(env_file).is_file():
            merged.update(dotenv_values(env_file))
        merged.update(os.environ if environ is None else environ)
        values = {}
        for field, setting in zip(fields(cls), SETTINGS, strict=True):
            raw = merged.get(setting.env)
            values[field.name] = raw if raw not in (None, "") else setting.default
        if values["lang"] is not None and values["lang"] not in ("zh", "en"):
            raise ConfigError(f"ORCH_LANG has value {values['lang']!r}; use 'zh' or 'en'")
        if not str(values["public_url"]).startswith(("http://", "https://")):
            raise ConfigError(f"ORCH_PUBLIC_URL has value {values['public_url']!r}; it must start with http:// or https://")
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<Settings database={_redact(self.database_url)} redis={_redact(self.redis_url or 'embedded')} public_url={self.public_url}>"


def _redact(url: str) -> str:
    """Hide a password inside a URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
