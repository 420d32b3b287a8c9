"""The README's screenshots, taken of a broker with some traffic: the overview
(``build/screenshots/overview.png``) and a failed job's page (``build/screenshots/job.png``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from browser_support import (
    ServerProcess,
    save_screenshot,
    text_of,
    wait_for_completed,
    wait_for_count,
    wait_for_live,
    wait_for_subscribed,
    wait_for_text,
    wait_until,
)
from processes import WorkerProcess
from selenium.webdriver.remote.webdriver import WebDriver

from conveyor.client import SyncClient

ROUNDS: Final = (40, 60, 90, 120, 150, 160, 130, 100, 70, 50, 60, 90, 140, 160, 120, 80, 50, 40)
"""Emails sent in each round of traffic, each round taking about ``ROUND_SECONDS``: a wave of
throughput, over about as long as the sparklines span (60 updates of 0.2 s)."""

ROUND_SECONDS: Final = 0.4

EMAIL_WORKERS: Final = 4
"""The emails worker's concurrency."""

WEBHOOKS_A_ROUND: Final = 10
"""Webhooks delivered in each round; in every third round one subscriber is down."""


def test_readme_screenshots(browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
                            start_worker: Callable[..., WorkerProcess],
                            screenshot: Callable[[], Path]) -> None:
    start_worker("send_email", queue="emails", concurrency=EMAIL_WORKERS)
    start_worker("make_thumbnail", queue="thumbnails", concurrency=2)
    start_worker("deliver_webhook", queue="webhooks", concurrency=4)
    for queue in ("emails", "thumbnails", "webhooks"):
        wait_for_subscribed(browser, client, queue)
    client.add_bulk("reports", [{"report": f"weekly-{n}"} for n in range(25)],
                    name="report.render")
    client.pause("reports")
    client.add_bulk("invoices", [{"invoice": f"2024-{n:04}"} for n in range(12)],
                    name="invoice.send", delay=3600)

    browser.get(dashboard.page("/"))
    wait_for_live(browser)
    emails = failed = 0
    for number, size in enumerate(ROUNDS):
        seconds = round(ROUND_SECONDS * EMAIL_WORKERS / size, 4)
        client.add_bulk("emails", [{"to": f"customer{emails + n}@example.com",
                                    "seconds": seconds} for n in range(size)],
                        name="email.send")
        emails += size
        down = number % 3 == 0
        failed += down
        client.add_bulk("webhooks", [
            {"url": f"https://hooks.example.com/shop-{n}", "event": "order.paid",
             "status": 503 if down and n == 0 else 200, "seconds": 0.02}
            for n in range(WEBHOOKS_A_ROUND)], name="webhook.deliver")
        client.add_bulk("thumbnails", [{"image": f"uploads/{number}-{n}.jpg", "seconds": 0.03}
                                       for n in range(15)], name="image.thumbnail")
        wait_for_completed(browser, client, "emails", emails)
    # A backlog for the overview to show.
    client.add_bulk("thumbnails", [{"image": f"uploads/batch-{n}.jpg", "seconds": 0.03}
                                   for n in range(120)], name="image.thumbnail")

    wait_for_count(browser, 'tr[data-queue="emails"]', "completed", emails)
    wait_for_count(browser, 'tr[data-queue="webhooks"]', "failed", failed)
    wait_for_count(browser, 'tr[data-queue="reports"]', "waiting", 25)
    wait_for_count(browser, 'tr[data-queue="invoices"]', "delayed", 12)
    wait_for_text(browser, 'tr[data-queue="reports"] td[data-field="paused"]', "paused")
    wait_until(browser, lambda: int(text_of(
        browser, 'tr[data-queue="thumbnails"] td[data-count="waiting"]')) > 0,
        "the thumbnails' backlog in the overview")
    save_screenshot(browser, "overview")

    failed_job = client.get_jobs("webhooks", "failed", limit=1)[0]
    browser.get(dashboard.page(f"/jobs/{failed_job.id}"))
    wait_for_text(browser, "#job-state", "failed")
    wait_until(browser, lambda: "in deliver_webhook" in text_of(browser, "pre#job-traceback"),
               "the traceback on the job page")
    save_screenshot(browser, "job")
    screenshot()
