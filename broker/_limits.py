"""A queue's limits: how many of its jobs may start now.

Two limits, either or both: ``concurrency`` (the most jobs of the queue active at once, across
all workers) and a rate (at most ``rate`` starts in any ``per`` seconds). The rate is kept as
evenly spaced slots, one every ``interval = per / rate`` seconds (GCRA): ``next`` is the
monotonic time of the next free slot, and each start takes it and moves it one interval on. So
the starts of a busy queue are spaced by the interval, whatever the window one looks at, with no
burst at a window's edge. A slot nobody took is lost: after a quiet spell the slots start again
from the moment work comes, so no burst builds up while the queue is idle.

The timer's own lateness is made up for: when jobs were waiting for the next slot (the timer
was armed for it) and the timer ran late, the slots passed meanwhile are still used, up to
``CATCH_UP`` seconds of them; otherwise a timer a fraction of a millisecond late would lower every
rate near a thousand a second. Never beyond the rate, though: the times of the last ``rate``
starts are kept (``starts``), and no start comes before the oldest of them left its window.

A worker may also hold a queue back for a while (``throttle``: the service its jobs call is rate
limiting): no job of the queue starts before ``until``, whatever its limits. A queue with no
limits of its own keeps a limiter only while it is held back.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Final

from conveyor.protocol import QueueLimits

__all__ = ["CATCH_UP", "Limiter", "limiter"]

CATCH_UP: Final = 0.002
"""Seconds of slots a late timer may still use (jobs were waiting for them), as long as no
window of ``per`` seconds gets more than ``rate`` starts (``Limiter.starts``)."""
WINDOW_LOG: Final = 100_000
"""The largest rate whose last starts are kept (8 bytes each): above it, no catch-up longer than
one interval (``_CATCH_UP_SHARE``) keeps the windows instead."""
_CATCH_UP_SHARE: Final = 0.9
"""Without the log of starts, the most of one interval a late timer may make up for."""
_EARLY: Final = 1e-6
"""Seconds before its slot that a start counts as at its slot: the state machine's times are
wall times moved onto the monotonic clock, which rounds (by about 2e-7 s at today's wall)."""


class Limiter:
    """The limits of one queue and where its rate stands."""

    __slots__ = ("catch_up", "concurrency", "interval", "limits", "next", "starts", "timed",
                 "until")

    def __init__(self, limits: QueueLimits, next_slot: float = float("-inf"),
                 until: float = float("-inf"), old_starts: Iterable[float] | None = None) -> None:
        self.limits = limits
        self.concurrency = limits.concurrency
        self.interval = None if limits.rate is None else limits.per / limits.rate
        """Seconds between two starts (None: no rate limit)."""
        rate = limits.rate
        self.starts: deque[float] | None = None
        """The times of the last ``rate`` starts (monotonic seconds), for rates up to
        ``WINDOW_LOG``: a start made up for after a late timer must still leave every window of
        ``per`` seconds with at most ``rate`` starts."""
        if rate is not None and rate <= WINDOW_LOG:
            self.starts = deque(() if old_starts is None else old_starts, maxlen=rate)
        self.catch_up = CATCH_UP
        """Seconds of lateness a start may make up for."""
        if self.interval is not None and self.starts is None:
            # Without the log, less than one interval: a start late by L seconds, made up for,
            # puts L / interval more starts in the window that begins with it.
            self.catch_up = min(CATCH_UP, self.interval * _CATCH_UP_SHARE)
        self.next = next_slot
        """When (monotonic seconds) the next slot is free."""
        self.timed = False
        """Jobs wait for the next slot: the timer is armed for it."""
        self.until = until
        """When (monotonic seconds) the queue is no longer held back (``throttle``)."""

    @property
    def limited(self) -> bool:
        """Whether the queue has limits of its own (not only a hold)."""
        return self.interval is not None or self.concurrency is not None

    def room(self, active: int, at: float) -> int:
        """How many jobs may start at ``at`` (monotonic seconds) with ``active`` running."""
        if at < self.until:
            return 0
        room = -1
        if self.concurrency is not None:
            room = self.concurrency - active
            if room <= 0:
                return 0
        interval = self.interval
        if interval is None:
            return room
        start = self.next
        if start > at + _EARLY:
            return 0
        if not (self.timed and start >= at - self.catch_up):
            start = at  # unused slots are lost: no burst after a quiet spell
        # The slots from ``start`` up to ``at``: one at ``start`` and one per interval since.
        slots = int(max(at - start, 0.0) / interval) + 1
        starts = self.starts
        if starts is not None and len(starts) + slots > self.limits.rate:  # type: ignore[operator]
            # The window (at - per, at] keeps the starts after at - per: room for the rest.
            left = bisect.bisect_right(starts, at - self.limits.per)
            slots = min(slots, starts.maxlen - len(starts) + left)  # type: ignore[operator]
            if slots <= 0:
                return 0
        return slots if room < 0 else min(room, slots)

    def due(self) -> float:
        """When (monotonic seconds) the next start may be: its slot, and no sooner than the
        oldest start of the last ``rate`` leaves the window."""
        starts = self.starts
        if starts is not None and len(starts) == starts.maxlen:
            return max(self.next, starts[0] + self.limits.per + _EARLY)
        return self.next

    def took(self, count: int, at: float) -> None:
        """``count`` jobs started at ``at`` (monotonic seconds): they took the next slots."""
        if self.interval is None or count == 0:
            return
        start = self.next
        if not (self.timed and start >= at - self.catch_up):
            start = max(start, at)
        self.next = start + count * self.interval
        if self.starts is not None:
            self.starts.extend(itertools.repeat(at, count))


def limiter(limits: QueueLimits, old: Limiter | None) -> Limiter | None:
    """The limiter for ``limits`` (None when they limit nothing and the queue is not held
    back); a queue's next slot and hold stay where its ``old`` limiter had them, so changing the
    limits gives no start for free."""
    if limits.rate is None and limits.concurrency is None and (
            old is None or old.until == float("-inf")):
        return None
    if old is None:
        return Limiter(limits)
    return Limiter(limits, old.next, old.until, old.starts)
