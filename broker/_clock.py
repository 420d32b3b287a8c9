"""The broker's two clocks, and how times move from one to the other.

Wall time (Unix seconds) is for what is persisted or shown: ``created_at``, ``finished_at``,
``run_at``. It can step, when an operator or NTP sets the system clock. Monotonic time never
steps: everything that runs out (leases, the timer, the deadlines of delayed and retained jobs)
runs on it, so a step of the wall clock neither takes jobs from healthy workers nor stretches a
lease or a delay.

A wall time that the timer must serve (a job's ``run_at``, a retained job's ``finished_at`` plus
its ``keep_result``) is converted to monotonic time once, when its deadline is armed, at the
offset between the two clocks at that moment.
"""

from __future__ import annotations

import time
from typing import Final, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "Timeline"]

_STEP: Final = 0.001
"""Seconds by which the wall clock must move against the monotonic one to count as a step."""
_READINGS: Final = 5
"""Readings of the clocks tried at most for one careful measurement."""


class Clock(Protocol):
    """Where the broker reads the time."""

    def wall(self) -> float:
        """Unix seconds now (the clock an operator sets; it may step)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps, from an arbitrary origin."""


class SystemClock:
    """The system's clocks: ``time.time`` and ``time.monotonic``."""

    __slots__ = ()

    # The functions themselves, not methods calling them: read on every request.
    wall = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)


SYSTEM_CLOCK: Final = SystemClock()


class Timeline:
    """Where the wall clock stands against the monotonic one.

    The state machine is handed wall times (``now``); its deadlines live on the monotonic
    clock. ``now()`` reads the clocks and keeps their offset, which ``monotonic`` adds to a wall
    time. The offset moves only when the wall clock steps (by more than ``_STEP``): reading two
    clocks one after the other never gives exactly the same difference twice, and a jittering
    offset would let two deadlines a microsecond apart trade places. Without a clock (tests that
    pass times by hand) the offset stays 0: the timers run on the times passed in.
    """

    __slots__ = ("clock", "offset")

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.offset = 0.0
        """Monotonic minus wall seconds: as measured when the wall clock last stepped."""
        if clock is not None:
            self.offset = self._measure(clock)

    def now(self) -> float:
        """The wall time now; notes a step of the wall clock."""
        clock = self.clock
        if clock is None:
            raise RuntimeError("this state has no clock: pass the times by hand")
        wall = clock.wall()
        if not -_STEP <= clock.monotonic() - wall - self.offset <= _STEP:
            # A step, or only a pause between the two readings: measure again, with care.
            self.offset = self._measure(clock, self.offset)
        return wall

    def monotonic(self, wall: float) -> float:
        """The monotonic time at which the wall clock will show ``wall`` (as it stands now)."""
        return wall + self.offset

    @staticmethod
    def _measure(clock: Clock, known: float | None = None) -> float:
        """The offset between the clocks; ``known`` unless it moved by more than ``_STEP``."""
        for _ in range(_READINGS):
            before = clock.monotonic()
            wall = clock.wall()
            after = clock.monotonic()
            if after - before <= _STEP:  # not a reading that a pause (preemption) spoilt
                break
        offset = (before + after) / 2 - wall
        if known is not None and abs(offset - known) <= _STEP:
            return known
        return offset
