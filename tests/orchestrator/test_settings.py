from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.settings import SETTINGS, Settings


def test_defaults_without_environment() -> None:
    s = Settings.from_env({}, env_file=None)
    assert s.database_url == "sqlite:///orchestrator.db"
    assert s.redis_url is None  # embedded Redis
    assert s.public_url == "http://127.0.0.1:8000"


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DATABASE_URL=postgresql://u:pw@db/x\nORCH_PUBLIC_URL=https://from-file.example\n", encoding="utf-8")
    s = Settings.from_env({"ORCH_PUBLIC_URL": "https://from-env.example"}, env_file=env)
    assert s.database_url == "postgresql://u:pw@db/x"
    assert s.public_url == "https://from-env.example"
    assert "pw" not in repr(s)


@pytest.mark.parametrize(("name", "value", "words"), [
    ("ORCH_LANG", "fr", "ORCH_LANG has value 'fr'"),
    ("ORCH_PUBLIC_URL", "example.com", "ORCH_PUBLIC_URL has value 'example.com'"),
    ("ORCH_WEBHOOK_URL", "ftp://hooks.example.com/x", "ORCH_WEBHOOK_URL has value 'ftp://hooks.example.com/x'; use an http:// or https:// URL"),
    ("ORCH_WEBHOOK_URL", "hooks.example.com/x", "ORCH_WEBHOOK_URL has value 'hooks.example.com/x'"),
    ("ORCH_WEBHOOK_URL", "http://hooks.example.com:99999/x", "ORCH_WEBHOOK_URL has value"),
    ("ORCH_WEBHOOK_TIMEOUT", "0", "ORCH_WEBHOOK_TIMEOUT has value '0'; use a number of seconds above 0"),
    ("ORCH_WEBHOOK_TIMEOUT", "ten", "ORCH_WEBHOOK_TIMEOUT has value 'ten'"),
    ("ORCH_WEBHOOK_TIMEOUT", "nan", "ORCH_WEBHOOK_TIMEOUT has value 'nan'"),
    ("ORCH_SMS_SIGNATURE", "v2", "ORCH_SMS_SIGNATURE has value 'v2'; use 'v3' or 'v1'"),
    ("ORCH_SMTP_TLS", "ssl", "ORCH_SMTP_TLS has value 'ssl'"),
    ("ORCH_SMTP_PORT", "99999", "ORCH_SMTP_PORT has value '99999'"),
    ("ORCH_ROUTES", "sms=carrier-pigeon", "transports webhook, console, aliyun_sms, smtp"),
])
def test_bad_values_name_the_setting(name: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings.from_env({name: value}, env_file=None)


def test_every_setting_is_documented() -> None:
    ops = (Path(__file__).parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    for setting in SETTINGS:
        assert f"`{setting.env}`" in ops, f"{setting.env} is not documented in docs/operations.md"
