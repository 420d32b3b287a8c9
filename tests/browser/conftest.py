"""Fixtures for the browser tests: the dashboard in a real headless Chromium (see
``browser_fixtures``).

Without selenium, the dashboard or Chromium every test module here is skipped, all for the one
reason; with ``CI`` set each fails instead, naming it: CI must run these tests (``.ci/run``
installs Chromium).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_CHROMIUM = Path("/usr/bin/chromium")
_CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _missing_requirement() -> str | None:
    """What the browser tests lack to run here, or None."""
    for module, what in (("selenium", "selenium (pip install selenium)"),
                         ("conveyor.dashboard", "the dashboard package, conveyor.dashboard")):
        if importlib.util.find_spec(module) is None:
            return f"the browser tests need {what}"
    for path, package in ((_CHROMIUM, "chromium"), (_CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return (f"the browser tests need {path} (apt-get install {package}; .ci/run "
                    "installs it)")
    return None


_MISSING = _missing_requirement()

if _MISSING is None:
    # Found by pytest in this module's namespace; they need selenium, hence only here.
    from browser_fixtures import (  # noqa: F401
        broker_process,
        browser,
        client,
        dashboard,
        screenshot,
        start_worker,
    )


class _Unrunnable(pytest.File):
    """A test module that cannot run here: skipped, or in CI one failing test."""

    def collect(self) -> Iterator[pytest.Item]:
        assert _MISSING is not None
        if not os.environ.get("CI"):
            pytest.skip(_MISSING)
        yield _MissingRequirement.from_parent(self, name="requirements")


class _MissingRequirement(pytest.Item):
    """Fails, naming what the browser tests lack, since CI must run them."""

    def runtest(self) -> None:
        pytest.fail(f"{_MISSING}; CI is set, so they must run", pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, "the browser tests' requirements"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector
                                ) -> pytest.Collector | None:
    """Collect the test modules as ``_Unrunnable`` when a requirement is missing: importing
    them would fail."""
    if _MISSING is None:
        return None
    return _Unrunnable.from_parent(parent, path=module_path)
