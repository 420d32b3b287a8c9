"""The queue page's actions in a real browser: pause and resume, drain with a confirmation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from browser_support import (
    ServerProcess,
    click,
    text_of,
    wait_for_count,
    wait_for_live,
    wait_for_text,
    wait_until,
)
from processes import WorkerProcess
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from conveyor.client import SyncClient


def paused_by_broker(client: SyncClient, queue: str) -> tuple[bool, bool]:
    """Whether the broker has ``queue`` paused, as ``queues()`` and as ``stats()`` say."""
    (summary,) = [item for item in client.queues() if item.name == queue]
    (stats,) = client.stats(queue).queues
    return summary.paused, stats.paused


def test_pause_and_resume_a_queue(
        browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
        start_worker: Callable[..., WorkerProcess], screenshot: Callable[[], Path]) -> None:
    worker = start_worker("complete", queue="exports")
    client.wait(client.add("exports", {"export": 0}), timeout=20)
    browser.get(dashboard.page("/queues/exports"))
    wait_for_live(browser)
    wait_for_text(browser, "#paused-state", "running")
    wait_for_count(browser, "", "completed", 1)

    click(browser, "#pause")
    wait_for_text(browser, "#paused-state", "paused")
    wait_until(browser, lambda: paused_by_broker(client, "exports") == (True, True),
               "the broker's queue paused")

    client.add_bulk("exports", [{"export": n} for n in range(1, 4)])
    wait_for_count(browser, "", "waiting", 3)
    screenshot()
    # The worker is still there, and would have taken them at once.
    counts = client.counts("exports")
    assert (counts["waiting"], counts["active"], counts["completed"]) == (3, 0, 1)
    assert counts["workers"] == 1, worker.log

    click(browser, "#resume")
    wait_for_text(browser, "#paused-state", "running")
    wait_until(browser, lambda: paused_by_broker(client, "exports") == (False, False),
               "the broker's queue resumed")
    wait_for_count(browser, "", "completed", 4)
    wait_for_count(browser, "", "waiting", 0)


def dialog_open(browser: WebDriver) -> bool:
    """Whether the confirmation dialog is open."""
    return bool(browser.find_element(By.CSS_SELECTOR, "dialog#confirm").get_property("open"))


def test_drain_asks_for_confirmation(
        browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
        screenshot: Callable[[], Path]) -> None:
    client.add_bulk("newsletters", [{"issue": n} for n in range(5)])
    browser.get(dashboard.page("/queues/newsletters"))
    wait_for_live(browser)
    wait_for_count(browser, "", "waiting", 5)

    click(browser, "#drain")
    wait_until(browser, lambda: dialog_open(browser), "the confirmation dialog open")
    screenshot()
    click(browser, "#confirm-no")
    wait_until(browser, lambda: not dialog_open(browser), "the confirmation dialog closed")
    # A drain sent on "no" would show by now: a job added afterwards shows in the page only
    # after the dashboard's next poll of the broker.
    client.add("newsletters", {"issue": 5})
    wait_for_count(browser, "", "waiting", 6)
    assert client.counts("newsletters")["waiting"] == 6

    click(browser, "#drain")
    wait_until(browser, lambda: dialog_open(browser), "the confirmation dialog open again")
    click(browser, "#confirm-yes")
    wait_for_count(browser, "", "waiting", 0)
    assert client.counts("newsletters")["waiting"] == 0
    wait_until(browser, lambda: text_of(browser, "#flash"), "the drain's outcome in #flash")
