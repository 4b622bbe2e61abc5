"""The code is strictly typed: mypy (settings in pyproject.toml) finds nothing."""

from pathlib import Path

from mypy import api


def test_mypy_strict_finds_nothing() -> None:
    root = Path(__file__).parents[1]
    stdout, stderr, status = api.run(["--config-file", str(root / "pyproject.toml"), "--cache-dir", str(root / ".mypy_cache")])
    assert status == 0, stdout + stderr
