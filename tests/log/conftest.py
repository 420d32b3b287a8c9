"""Fixtures of the log tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from log_support import Failpoints


@pytest.fixture
def failpoints() -> Iterator[Failpoints]:
    """Install hooks at the failpoints of brokers running in this process; removed at the end."""
    points = Failpoints()
    try:
        yield points
    finally:
        points.clear()
