"""What the browser tests and their fixtures share: the broker and dashboard subprocesses,
worker processes, a headless Chromium driven by Selenium, waiting on what the page shows, and
screenshots. A module of its own, named for this directory, so that tests import these by a
name no other directory's module has.

The tests run the real thing end to end: ``python -m conveyor.broker`` and
``python -m conveyor.cli dashboard`` as child processes, workers as ``python -m
conveyor.worker`` processes, and Debian's ``chromium`` through its ``chromedriver``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

from processes import ROOT, STOP_TIMEOUT, WorkerProcess, check_asyncio_leaks, launch_broker
from processes import subprocess_env as child_env
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from conveyor.client import SyncClient

HERE: Final = Path(__file__).resolve().parent

CHROMIUM: Final = Path("/usr/bin/chromium")
"""Debian's ``chromium`` package (``.ci/run`` installs it)."""

CHROMEDRIVER: Final = Path("/usr/bin/chromedriver")
"""Debian's ``chromium-driver`` package, the WebDriver server of that same Chromium."""

WINDOW: Final = (1280, 900)
"""The browser window's width and height in pixels: a laptop screen, as in the README."""

SCREENSHOTS: Final = ROOT / "build" / "screenshots"
"""Where every test saves what the browser showed (``build/`` is not tracked by git)."""

WAIT_TIMEOUT: Final = 20.0
"""Seconds a test waits for the page (or the broker) to show what it expects."""

DASHBOARD_START_TIMEOUT: Final = 20.0
"""Seconds the dashboard gets to print its ``listening on`` line."""

REFRESH: Final = 0.2
"""The dashboard's ``--refresh`` (seconds between statistics polls): short, so that the
tests see changes soon."""

_T = TypeVar("_T")


def subprocess_env() -> dict[str, str]:
    """The environment for child processes, with ``browser_handlers`` importable."""
    return child_env(HERE)


# Child processes.


class ServerProcess:
    """A broker or a dashboard running as a child process, once it printed ``listening on``."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], line: str,
                 log_path: Path) -> None:
        self.name = name
        self.process = process
        self.line = line
        """What it printed first: ``listening on ADDRESS``."""
        self.address = line.removeprefix("listening on ").strip()
        """``HOST:PORT`` for a broker, ``http://HOST:PORT/`` for a dashboard."""
        self.log_path = log_path

    @property
    def log(self) -> str:
        """What the process wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def page(self, path: str) -> str:
        """The URL of the dashboard's page ``path`` (``/queues/emails``...)."""
        return self.address.rstrip("/") + "/" + path.lstrip("/")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM it and wait for its exit (SIGKILL if it hangs, and fail); return the status.

        Fails when it logged one of ``processes.ASYNCIO_LEAKS``.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"{self.name} did not exit within {timeout} s of SIGTERM; "
                                     f"its log:\n{self.log}") from None
        if self.process.stdout is not None and not self.process.stdout.closed:
            self.process.stdout.close()
        check_asyncio_leaks(self.log, self.name)
        return self.process.returncode


def start_broker(directory: Path) -> ServerProcess:
    """Start ``python -m conveyor.broker --port 0`` with its data and log in ``directory``;
    return once it listens."""
    log_path = directory / "broker.stderr"
    process, line = launch_broker(
        [sys.executable, "-m", "conveyor.broker", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(directory / "broker-data")],
        stderr_path=log_path, env=subprocess_env(), cwd=directory)
    return ServerProcess("broker", process, line, log_path)


def start_dashboard(directory: Path, broker_url: str) -> ServerProcess:
    """Start ``conveyor dashboard --url BROKER --port 0 --refresh 0.2`` with its output in
    ``directory``; return once it printed ``listening on http://HOST:PORT/``.

    Its stdout goes to a file, not a pipe: a web server may log every request there, and a pipe
    nobody reads would block it once full.
    """
    stdout_path = directory / "dashboard.stdout"
    log_path = directory / "dashboard.stderr"
    with stdout_path.open("wb") as stdout, log_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "dashboard", "--url", broker_url,
             "--port", "0", "--refresh", str(REFRESH)],
            cwd=directory, env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=stdout,
            stderr=stderr)
    deadline = time.monotonic() + DASHBOARD_START_TIMEOUT
    output = b""
    # Polled: the line is read from a file, which select() cannot wait on.
    while b"\n" not in output and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        output = stdout_path.read_bytes()
    line = stdout_path.read_bytes().partition(b"\n")[0].decode(errors="replace")
    if not line.startswith("listening on http://"):
        if process.poll() is None:
            process.kill()
        process.wait()
        raise AssertionError(f"dashboard did not start: it printed {line!r}; stderr:\n"
                             f"{log_path.read_text(errors='replace')}")
    return ServerProcess("dashboard", process, line, log_path)


def start_worker(directory: Path, handler: str, *, queue: str, url: str,
                 concurrency: int = 1) -> WorkerProcess:
    """Start ``python -m conveyor.worker browser_handlers:HANDLER --queue QUEUE`` (one
    process) in a process group of its own, its output in ``directory``."""
    log_path = directory / f"worker-{queue}-{handler}.log"
    args = [sys.executable, "-m", "conveyor.worker", f"browser_handlers:{handler}",
            "--queue", queue, "--url", url, "--processes", "1",
            "--concurrency", str(concurrency)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, cwd=ROOT, env=subprocess_env(),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    return WorkerProcess(process, log_path)


def stop_worker(worker: WorkerProcess) -> None:
    """Stop ``worker`` (SIGTERM to its group, then SIGKILL) from synchronous code."""
    asyncio.run(worker.stop())


# The browser.


def open_browser() -> WebDriver:
    """A headless Chromium with a ``WINDOW``-sized window, driven through chromedriver."""
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     # The dashboard is on the loopback: no proxy from the environment applies.
                     "--no-proxy-server", "--disable-gpu"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_window_size(*WINDOW)
    return driver


def save_screenshot(driver: WebDriver, name: str) -> Path:
    """Save what the browser shows as ``build/screenshots/NAME.png``; return the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"the browser could not save a screenshot to {path}")
    return path


# Waiting for what the page (or the broker) shows.


def wait_until(driver: WebDriver, condition: Callable[[], _T | None], what: str,
               timeout: float = WAIT_TIMEOUT) -> _T:
    """Poll ``condition`` until it returns something true; return that.

    Elements missing or replaced meanwhile (the page updates live) count as "not yet". Fails
    naming ``what`` after ``timeout`` seconds.
    """
    wait = WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(NoSuchElementException,
                                             StaleElementReferenceException))
    try:
        value = wait.until(lambda _: condition())
    except TimeoutException:
        raise AssertionError(f"{what}: not within {timeout} s (page {driver.current_url})"
                             ) from None
    assert value is not None  # until() returns only a true value
    return value


def text_of(driver: WebDriver, selector: str) -> str:
    """The text shown by the first element matching the CSS ``selector``, stripped.

    Read in one script call: the page replaces elements as it updates live, so an element
    found by one call may be gone by the next.
    """
    text = driver.execute_script(
        "const element = document.querySelector(arguments[0]);"
        "return element === null ? null : element.innerText;", selector)
    if text is None:
        raise NoSuchElementException(f"no element matches {selector!r}")
    return str(text).strip()


def texts_of(driver: WebDriver, selector: str) -> list[str]:
    """The texts shown by every element matching the CSS ``selector`` (read as ``text_of``)."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText);",
        selector)
    return [str(text).strip() for text in texts]


def wait_for_text(driver: WebDriver, selector: str, expected: str,
                  timeout: float = WAIT_TIMEOUT) -> None:
    """Wait until the element ``selector`` shows exactly ``expected`` (stripped)."""
    seen: list[str] = []

    def shows() -> bool:
        try:
            seen.append(text_of(driver, selector))
        except NoSuchElementException:
            seen.append("<no such element>")
        return seen[-1] == expected

    try:
        wait_until(driver, shows, f"{selector} showing {expected!r}", timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it showed {seen[-1] if seen else None!r}") from None


def click(driver: WebDriver, selector: str) -> None:
    """Click the element matching the CSS ``selector``, found again if the page replaced it
    (as it updates live) between finding and clicking."""

    def clicked() -> bool:
        driver.find_element(By.CSS_SELECTOR, selector).click()
        return True

    wait_until(driver, clicked, f"a click on {selector}")


def wait_for_live(driver: WebDriver) -> None:
    """Wait until the page's server-sent event stream delivered its first update (the body's
    ``data-live`` is ``connected``)."""
    wait_until(driver, lambda: driver.find_element(By.CSS_SELECTOR,
                                                   'body[data-live="connected"]'),
               "the page's live updates connected")


def wait_for_count(driver: WebDriver, scope: str, state: str, expected: int,
                   timeout: float = WAIT_TIMEOUT) -> None:
    """Wait until the count of ``state`` inside ``scope`` (a CSS selector, "" for the whole
    page) shows ``expected``."""
    wait_for_text(driver, f'{scope} [data-count="{state}"]'.strip(), str(expected), timeout)


def wait_for_subscribed(driver: WebDriver, client: SyncClient, queue: str) -> None:
    """Wait until a worker is subscribed to ``queue``, as the broker says."""
    wait_until(driver, lambda: client.counts(queue)["workers"] >= 1,
               f"a worker subscribed to {queue!r}")


def wait_for_completed(driver: WebDriver, client: SyncClient, queue: str, total: int) -> None:
    """Wait until ``total`` jobs of ``queue`` completed, as the broker says."""
    wait_until(driver, lambda: client.counts(queue)["completed"] >= total,
               f"{total} jobs of {queue!r} completed")
