"""Fixtures every test directory shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conveyor.broker import Broker

# In-process broker.


@pytest.fixture
async def make_broker() -> AsyncIterator[Callable[..., Awaitable[Broker]]]:
    """A factory of started in-process brokers (keyword options go to ``Broker``)."""
    brokers: list[Broker] = []

    async def make(**options: Any) -> Broker:
        broker = Broker(host="127.0.0.1", port=0, **options)
        await broker.start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        await broker.close()


@pytest.fixture
async def broker(make_broker: Callable[..., Awaitable[Broker]]) -> Broker:
    """An in-process broker on a free port, without a log."""
    return await make_broker()


@pytest.fixture
def url(broker: Broker) -> str:
    """The in-process broker's address."""
    return f"127.0.0.1:{broker.port}"
