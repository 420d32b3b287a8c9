"""Fixtures of the security tests: brokers that require users, raw connections, and broker
subprocesses.

- ``secure_broker(users, **options)``: an in-process ``Broker`` on a free port reading a users
  file written from ``users`` (see ``security_support.write_users``); failed logins are
  answered after ``FAILURE_DELAY`` unless ``auth_failure_delay`` says otherwise.
- ``raw``: opens ``Raw`` connections (``raw.open(port)``, ``raw.login(port, user, password)``),
  every one closed at teardown.
- ``broker_process(*command)``: a broker subprocess (``CONVEYOR_BROKER`` or
  ``SECURITY_BROKER`` and their arguments), stopped at teardown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from security_support import (
    FAILURE_DELAY,
    BrokerProcess,
    RawConnections,
    SecureBroker,
    StartBroker,
    UserSpec,
    write_users,
)

from conveyor.broker import Broker


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    """Where the users file of the test goes."""
    return tmp_path / "users.toml"


@pytest.fixture
def secure_broker(make_broker: Callable[..., Awaitable[Broker]],
                  users_path: Path) -> SecureBroker:
    """``await secure_broker(users, **options)``: a started broker requiring ``users``."""

    async def make(users: Mapping[str, UserSpec], **options: Any) -> Broker:
        write_users(users_path, users)
        options.setdefault("auth_failure_delay", FAILURE_DELAY)
        return await make_broker(users=users_path, **options)

    return make


@pytest.fixture
async def raw() -> AsyncIterator[RawConnections]:
    """Raw connections, closed at teardown."""
    connections = RawConnections()
    yield connections
    await connections.close()


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[StartBroker]:
    """``broker_process(*command)``: a broker subprocess that has printed its ``listening on``
    line; every one started is stopped at teardown."""
    brokers: list[BrokerProcess] = []

    def start(*command: str) -> BrokerProcess:
        brokers.append(BrokerProcess(command, tmp_path / f"broker-{len(brokers)}.stderr"))
        return brokers[-1]

    yield start
    for broker in brokers:
        broker.stop()
