"""The overview and the workers page, live in a real browser."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from browser_support import (
    ServerProcess,
    text_of,
    texts_of,
    wait_for_count,
    wait_for_live,
    wait_for_subscribed,
    wait_until,
)
from processes import WorkerProcess
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from conveyor.client import SyncClient


def test_overview_counts_change_without_a_reload(
        browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
        screenshot: Callable[[], Path]) -> None:
    browser.get(dashboard.page("/"))
    wait_for_live(browser)
    # A reload or a navigation would lose this.
    browser.execute_script("window.conveyorTestMarker = 'still the same page';")

    client.add_bulk("imports", [{"row": row} for row in range(7)])
    row = 'tr[data-queue="imports"]'
    wait_for_count(browser, row, "waiting", 7)
    client.add_bulk("imports", [{"row": row} for row in range(7, 12)])
    wait_for_count(browser, row, "waiting", 12)
    screenshot()

    assert browser.execute_script("return window.conveyorTestMarker") == "still the same page"
    for state in ("active", "delayed", "completed", "failed", "workers"):
        assert text_of(browser, f'{row} td[data-count="{state}"]') == "0", state
    assert text_of(browser, f'{row} td[data-field="paused"]') == "running"
    assert browser.find_elements(By.CSS_SELECTOR, f"{row} svg.sparkline")
    assert text_of(browser, f'{row} a[href$="/queues/imports"]') == "imports"


def test_workers_page_lists_a_running_worker(
        browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
        start_worker: Callable[..., WorkerProcess], screenshot: Callable[[], Path]) -> None:
    worker = start_worker("complete", queue="thumbnails", concurrency=3)
    wait_for_subscribed(browser, client, "thumbnails")

    browser.get(dashboard.page("/workers"))

    def worker_row() -> str | None:
        for text in texts_of(browser, "table#workers tr[data-worker]"):
            if re.search(rf"\b{worker.pid}\b", text):
                return text
        return None

    row = wait_until(browser, worker_row, f"a row for the worker with pid {worker.pid}")
    screenshot()
    assert "thumbnails" in row
