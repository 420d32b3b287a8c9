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


def test_runs_of_events_at_one_time_count_in_their_own_second() -> None:
    rate = Rate()
    rate.begin(5.0, 1000.5)
    rate.pending += 2  # two more events at 5.0, counted by the caller
    assert rate.per_second(1001.0) == pytest.approx(3 / WINDOW)
    assert rate.at != 5.0  # a read ends the run: the next event begins another
    rate.begin(6.0, 1030.0)
    # The first run is in 1000's bucket: it leaves the window at 1060.
    assert rate.per_second(1059.0) == pytest.approx(4 / WINDOW)
    assert rate.per_second(1060.0) == pytest.approx(1 / WINDOW)
