"""The browser tests' fixtures (``conftest`` imports them once the tests can run here).

Each test module gets its own broker subprocess, ``conveyor dashboard`` subprocess and browser
(``broker_process``, ``dashboard``, ``browser``), plus a ``client`` of that broker; tests use
queues of their own. ``start_worker`` starts worker processes (stopped after the test), and
``screenshot()`` saves ``build/screenshots/<test name>.png`` (saved again when the test fails).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_support import (
    ServerProcess,
    open_browser,
    save_screenshot,
    start_broker,
    start_dashboard,
    stop_worker,
)
from browser_support import start_worker as _start_worker
from processes import WorkerProcess
from selenium.webdriver.remote.webdriver import WebDriver

from conveyor.client import SyncClient


@pytest.fixture(scope="module")
def broker_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A broker subprocess on a free port, for this module's tests; stopped at the end."""
    broker = start_broker(tmp_path_factory.mktemp("broker"))
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def client(broker_process: ServerProcess) -> Iterator[SyncClient]:
    """A client of ``broker_process``: the tests add jobs and read the broker's own state."""
    with SyncClient(broker_process.address, name="browser-tests") as connection:
        yield connection


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory,
              broker_process: ServerProcess) -> Iterator[ServerProcess]:
    """``conveyor dashboard`` of ``broker_process`` on a free port; it must exit 0 on SIGTERM."""
    server = start_dashboard(tmp_path_factory.mktemp("dashboard"), broker_process.address)
    yield server
    status = server.stop()
    assert status == 0, f"the dashboard exited {status} on SIGTERM; its log:\n{server.log}"


@pytest.fixture(scope="module")
def browser(dashboard: ServerProcess) -> Iterator[WebDriver]:
    """A headless Chromium (one for the module's tests); it quits before the dashboard stops,
    so that no live-update stream is open then."""
    driver = open_browser()
    yield driver
    driver.quit()


@pytest.fixture
def start_worker(tmp_path: Path, broker_process: ServerProcess
                 ) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(handler, queue=..., concurrency=1)``: a worker process running
    ``browser_handlers:HANDLER`` for ``broker_process``; all stopped after the test."""
    workers: list[WorkerProcess] = []

    def start(handler: str, *, queue: str, concurrency: int = 1) -> WorkerProcess:
        worker = _start_worker(tmp_path, handler, queue=queue, url=broker_process.address,
                               concurrency=concurrency)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        stop_worker(worker)


@pytest.fixture
def screenshot(request: pytest.FixtureRequest, browser: WebDriver) -> Iterator[Callable[[], Path]]:
    """``screenshot()`` saves what the browser shows as ``build/screenshots/<test name>.png``;
    when the test fails, what it showed then replaces that."""
    name = request.node.name

    def shoot() -> Path:
        return save_screenshot(browser, name)

    failed_before = request.session.testsfailed
    yield shoot
    # The test's own report is counted before its fixtures are torn down.
    if request.session.testsfailed > failed_before:
        shoot()
