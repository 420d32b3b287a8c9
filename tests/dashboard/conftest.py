"""Fixtures of the dashboard tests.

- ``broker`` / ``make_broker`` / ``url``: in ``tests/conftest.py``.
- ``dashboard``: the dashboard (``dashboard_support.Served``) for the ``broker`` fixture's broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dashboard_support import Served, serve


@pytest.fixture
async def dashboard(url: str) -> AsyncIterator[Served]:
    """The dashboard of the in-process broker, refreshing every 0.1 s."""
    async with serve(url) as served:
        yield served
