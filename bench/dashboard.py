"""The dashboard's responsiveness with 100 queues and 1,000,000 waiting jobs.

A fresh broker (fsync everysec) is filled with ``--queues`` queues of ``--jobs-per-queue``
waiting jobs each (nobody subscribed; payloads like ``{"user": 123, "n": 4567}``), and a
``conveyor dashboard --port 0`` process is pointed at it. Then each page is fetched
``--requests`` times over HTTP (one connection each, as a browser's first visit): the overview,
the workers page, a queue page (first page of its waiting jobs, and a page deep in the line), a
job page, a lookup by idempotency key, and ``/metrics``. The figure is the time from sending the
request to the last byte of the response.

With Chromium and Selenium installed (``.ci/run`` installs both), the overview and a queue page
are also loaded in headless Chromium: the figure is the browser's own load time
(``loadEventEnd`` of the navigation timing: HTML, the local CSS and JS, and the first render).

Prints p50 / p99 / max per page, then one JSON line. Target: every page loads in under 200 ms
(p99).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from measure import check, percentile, rounded  # noqa: E402

from conveyor.client import Client  # noqa: E402
from examples.processes import BrokerProcess  # noqa: E402

TARGET_MS = 200.0
"""Most milliseconds a page may take to load (p99)."""
BULK = 20_000
"""Jobs per ``add_bulk`` call while filling."""


class Dashboard:
    """``python -m conveyor.dashboard --port 0`` as a child process."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.dashboard", "--url", url, "--port", "0"],
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on http://"):
            self.process.kill()
            raise RuntimeError(f"the dashboard did not start (it printed {line!r})")
        self.base = line.removeprefix("listening on ").rstrip("/")
        host, _, port = self.base.removeprefix("http://").rpartition(":")
        self.host, self.port = host, int(port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fetch_ms(dashboard: Dashboard, path: str) -> float:
    """Milliseconds from sending ``GET path`` on a new connection to its last byte (following
    a redirect, as a browser does)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(dashboard.host, dashboard.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status in (302, 303):
            connection.request("GET", response.headers["location"])
            response = connection.getresponse()
            body = response.read()
    finally:
        connection.close()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 200 or not body:
        raise RuntimeError(f"GET {path} answered {response.status}")
    return elapsed


def browser_load_ms(base: str, paths: dict[str, str], requests: int) -> dict[str, list[float]]:
    """Each page's load time in headless Chromium (``loadEventEnd``), or nothing without it."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return {}
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        return {}
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        times: dict[str, list[float]] = {}
        for name, path in paths.items():
            driver.get(base + path)  # warm: the browser's own start-up is not the page's
            samples = []
            for _ in range(requests):
                driver.get(base + path)
                timing = driver.execute_script(
                    "const [n] = performance.getEntriesByType('navigation');"
                    "return n.loadEventEnd - n.startTime;")
                samples.append(float(timing))
            times[f"browser {name}"] = samples
        return times
    finally:
        driver.quit()


async def fill(client: Client, queues: int, per_queue: int) -> tuple[int, str]:
    """Add the jobs; return one job's id and the idempotency key of another."""
    key = "order-4711"
    first = 0
    for index in range(queues):
        queue = f"queue-{index:03d}"
        for start in range(0, per_queue, BULK):
            count = min(BULK, per_queue - start)
            ids = await client.add_bulk(queue, [{"user": n % 1000, "n": n}
                                                for n in range(start, start + count)])
            first = first or ids[0]
        if (index + 1) % 10 == 0 or index + 1 == queues:
            print(f"filling: {(index + 1) * per_queue:,} jobs in {index + 1} queues", flush=True)
    await client.add("queue-000", {"order": 4711}, id=key)
    return first, key


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=100, help="queues (default: 100)")
    parser.add_argument("--jobs-per-queue", type=int, default=10_000,
                        help="waiting jobs in each queue (default: 10000)")
    parser.add_argument("--requests", type=int, default=30,
                        help="timed loads of each page (default: 30)")
    args = parser.parse_args()
    broker = BrokerProcess("--fsync", "everysec")
    dashboard: Dashboard | None = None
    try:
        async with Client(broker.url, timeout=120) as client:
            started = time.perf_counter()
            job_id, key = await fill(client, args.queues, args.jobs_per_queue)
            fill_s = time.perf_counter() - started
            total = sum(queue.waiting for queue in (await client.stats()).queues)
        dashboard = Dashboard(broker.url)
        deep = args.jobs_per_queue // 50 // 2
        paths = {
            "overview": "/",
            "workers": "/workers",
            "queue": "/queues/queue-050",
            "queue, deep page": f"/queues/queue-050?state=waiting&page={deep}",
            "job": f"/jobs/{job_id}",
            "find by key": f"/find?q={key}",
            "metrics": "/metrics",
        }
        times: dict[str, list[float]] = {}
        for name, path in paths.items():
            fetch_ms(dashboard, path)  # warm
            times[name] = sorted([fetch_ms(dashboard, path) for _ in range(args.requests)])
        browser = await asyncio.to_thread(
            browser_load_ms, dashboard.base,
            {"overview": "/", "queue": "/queues/queue-050"}, args.requests)
        times.update({name: sorted(samples) for name, samples in browser.items()})
    finally:
        if dashboard is not None:
            dashboard.stop()
        broker.stop()
    pages = {name: {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
                    "max_ms": samples[-1]} for name, samples in times.items()}
    worst = max(page["p99_ms"] for page in pages.values())
    figures: dict[str, Any] = {
        "bench": "dashboard", "queues": args.queues, "waiting_jobs": total,
        "fill_s": fill_s, "requests": args.requests, "pages": pages,
        "browser": bool(browser), "checks": {"page_load_p99_ms": check(worst, "<", TARGET_MS)},
    }
    print(f"dashboard: {args.queues} queues, {total:,} waiting jobs (filled in {fill_s:.1f} s), "
          f"{args.requests} loads of each page")
    print(f"{'page':>24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, page in pages.items():
        print(f"{name:>24} {page['p50_ms']:>8.1f} {page['p99_ms']:>8.1f} {page['max_ms']:>8.1f}")
    if not browser:
        print("(no browser figures: selenium or chromium/chromedriver is not installed)")
    result = figures["checks"]["page_load_p99_ms"]
    print(f"target page load p99: {result['value']:.1f} ms < {TARGET_MS:.0f} ms "
          f"{'met' if result['met'] else 'MISSED'}")
    print(json.dumps(rounded(figures)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(main())
