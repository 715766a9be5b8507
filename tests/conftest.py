"""Fixtures shared by the test files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixture_project() -> Callable[[str], Path]:
    """``fixture_project("valid-stack")`` -> the project folder tests/fixtures/valid-stack."""

    def get(name: str) -> Path:
        path = FIXTURES / name
        assert path.is_dir(), f"no fixture project {path}"
        return path

    return get
