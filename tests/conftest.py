"""Shared test fixtures: messages in English, and the minimal playbook copied where a test may change it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.i18n import current_language, set_language

FIXTURES = Path(__file__).parent / "fixtures"
MINIMAL = FIXTURES / "minimal"


def pytest_configure(config: pytest.Config) -> None:
    # On a failing example hypothesis writes a patch with libcst, which imports the deprecated
    # mypy_extensions.TypedDict; under `filterwarnings = error` the report would crash instead.
    config.addinivalue_line("filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def english() -> Iterator[None]:
    """Every test reads English messages unless it switches language itself; restored afterwards."""
    before = current_language()
    set_language("en")
    yield
    set_language(before)


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    """Path of playbook.yaml in a private copy of tests/fixtures/minimal (with its CSVs)."""
    target = tmp_path / "minimal"
    shutil.copytree(MINIMAL, target)
    return target / "playbook.yaml"
