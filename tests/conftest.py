"""Fixtures every test directory shares."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from processes import ASYNCIO_LEAKS

from conveyor.broker import Broker

# asyncio reports a future or task whose exception nobody read, and a task destroyed while still
# pending, as ERROR records of its logger when they are garbage-collected, not as warnings:
# every test fails that leaves one behind.


class _AsyncioLeaks(logging.Handler):
    """Keeps the asyncio logger's records of unread exceptions and destroyed pending tasks."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(leak in message for leak in ASYNCIO_LEAKS):
            self.found.append(self.format(record))


_leaks = _AsyncioLeaks()
logging.getLogger("asyncio").addHandler(_leaks)


@pytest.fixture(autouse=True)
def _no_asyncio_leaks() -> Iterator[None]:
    """Fail the test when asyncio reported a leak during it (checked after every other fixture
    of the test, its event loop included, is torn down). Most leaked objects are freed, and
    reported, as soon as their last reference goes; those held in reference cycles are reported
    when the garbage collector runs, possibly in a later test, and at the latest at the end of
    the session (see ``pytest_sessionfinish``): a full collection after every test would cost
    tens of milliseconds each."""
    yield
    found, _leaks.found = _leaks.found, []
    if found:
        pytest.fail("asyncio reported:\n" + "\n".join(found), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a last garbage collection makes asyncio report a leak."""
    gc.collect()
    found, _leaks.found = _leaks.found, []
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line("asyncio reported, after the last test:\n" + "\n".join(found),
                                red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
