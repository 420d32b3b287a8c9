"""The job page in a real browser: a failed job's traceback, retrying it, finding a job by its
idempotency key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from browser_support import (
    ServerProcess,
    click,
    text_of,
    wait_for_live,
    wait_for_text,
    wait_until,
)
from processes import WorkerProcess
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from conveyor.client import JobState, SyncClient


def fail_a_report(client: SyncClient, browser: WebDriver,
                  start_worker: Callable[..., WorkerProcess], directory: Path,
                  queue: str) -> tuple[int, Path]:
    """Run a ``render_report`` job that fails (its marker file exists) on a worker process;
    return the job's id and the marker, once the broker has the job failed."""
    marker = directory / "ledger.lock"
    marker.touch()
    worker = start_worker("render_report", queue=queue)
    job_id = client.add(queue, {"report": "Q3-revenue", "marker": str(marker)},
                        name="report.render")

    def failed() -> bool:
        job = client.get_job(job_id)
        return job is not None and job.state is JobState.FAILED

    wait_until(browser, failed, f"job {job_id} failed on worker {worker.pid}")
    return job_id, marker


def test_failed_job_page_shows_the_traceback(
        browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        screenshot: Callable[[], Path]) -> None:
    job_id, _ = fail_a_report(client, browser, start_worker, tmp_path, "reports")

    browser.get(dashboard.page(f"/jobs/{job_id}"))
    wait_for_text(browser, "#job-state", "failed")
    browser.execute_script(
        "document.querySelector('pre#job-traceback').scrollIntoView({block: 'center'});")
    screenshot()

    text = text_of(browser, "pre#job-traceback")
    assert "report Q3-revenue cannot render: ledger.lock is locked" in text
    assert "in render_report" in text
    assert "ReportFailed" in text
    assert "ReportFailed" in text_of(browser, "#job-error-type")
    assert "ledger.lock is locked" in text_of(browser, "#job-error-message")
    assert text_of(browser, "#job-name") == "report.render"
    assert "Q3-revenue" in text_of(browser, "#job-data")
    assert "".join(text_of(browser, "#job-attempts").split()) == "1/1"


DELAYED_STREAMS = """
const Real = window.EventSource;
class Delayed {
  constructor(url) {
    this.readyState = 0;
    this.onmessage = null;
    this.onerror = null;
    this.timer = setTimeout(() => {
      this.real = new Real(url);
      this.real.onmessage = (event) => this.onmessage && this.onmessage(event);
      this.real.onerror = (event) => this.onerror && this.onerror(event);
      this.readyState = 1;
    }, 700);
  }
  close() {
    clearTimeout(this.timer);
    if (this.real) this.real.close();
    this.readyState = 2;
  }
}
Delayed.CLOSED = 2;
window.EventSource = Delayed;
"""
"""Makes every ``EventSource`` the page opens connect 0.7 s after it is made."""


def test_retry_on_the_job_page_completes_the_job_live(
        browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
        start_worker: Callable[..., WorkerProcess], tmp_path: Path,
        screenshot: Callable[[], Path]) -> None:
    job_id, marker = fail_a_report(client, browser, start_worker, tmp_path, "reports-retried")
    browser.get(dashboard.page(f"/jobs/{job_id}"))
    wait_for_text(browser, "#job-state", "failed")
    wait_for_live(browser)
    browser.execute_script("window.conveyorTestMarker = 'still the same page';")

    marker.unlink()  # the next try succeeds
    # The retried try runs while a stream the page opens after the action is still connecting
    # (streams connect 0.7 s late from now on; the queue is resumed as the action is done).
    browser.execute_script(DELAYED_STREAMS)
    client.pause("reports-retried")
    click(browser, "#retry")
    wait_until(browser, lambda: "put back in line" in text_of(browser, "#flash"),
               "the retry's outcome shown")
    client.resume("reports-retried")
    wait_for_text(browser, "#job-state", "completed")
    screenshot()

    assert browser.execute_script("return window.conveyorTestMarker") == "still the same page"
    # The retried try's events are in the timeline, each once: the page's stream after the
    # action takes over from the one before it without a gap.
    timeline = [item.get_attribute("class")
                for item in browser.find_elements(By.CSS_SELECTOR, "ol#timeline li")]
    assert timeline.count("completed") == 1, timeline
    assert timeline.count("active") == 1, timeline
    job = client.get_job(job_id)
    assert job is not None and job.state is JobState.COMPLETED
    assert job.result == {"report": "Q3-revenue", "pages": 3}


def test_find_a_job_by_its_idempotency_key(
        browser: WebDriver, dashboard: ServerProcess, client: SyncClient,
        screenshot: Callable[[], Path]) -> None:
    client.add("invoices", {"invoice": "2024-0041", "amount": 80.0}, id="invoice-2024-0041")
    job_id = client.add("invoices", {"invoice": "2024-0042", "amount": 129.5},
                        id="invoice-2024-0042")
    client.add("invoices", {"invoice": "2024-0043", "amount": 12.0}, id="invoice-2024-0043")

    browser.get(dashboard.page("/queues/invoices"))
    search = browser.find_element(By.CSS_SELECTOR, 'form#find input[name="q"]')
    search.send_keys("invoice-2024-0042", Keys.ENTER)

    wait_until(browser, lambda: browser.current_url.endswith(f"/jobs/{job_id}"),
               f"the browser on job {job_id}'s page")
    wait_for_text(browser, "#job-state", "waiting")
    screenshot()
    assert "2024-0042" in text_of(browser, "#job-data")
