"""``Rate``: events a second over the last minute, in one-second buckets."""

from __future__ import annotations

import pytest

from conveyor.broker.testing import WINDOW, Rate


def test_counts_within_the_window_and_forgets_what_left_it() -> None:
    rate = Rate()
    rate.mark(30, 1000.2)
    rate.mark(30, 1010.9)
    assert rate.per_second(1011.0) == pytest.approx(60 / WINDOW)
    # 1000's bucket leaves the window at 1060; 1010's at 1070.
    assert rate.per_second(1060.0) == pytest.approx(30 / WINDOW)
    assert rate.per_second(1070.5) == 0.0


def test_a_long_silence_or_a_clock_step_back_starts_over() -> None:
    rate = Rate()
    rate.mark(10, 1000.0)
    rate.mark(5, 5000.0)
    assert rate.per_second(5000.0) == pytest.approx(5 / WINDOW)
    rate.mark(7, 4000.0)
    assert rate.per_second(4000.0) == pytest.approx(7 / WINDOW)
