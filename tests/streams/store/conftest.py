"""Fixtures of the store tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    """An embedded (chdb) store of its own for the test."""
    return f"chdb://{tmp_path / 'store'}"
