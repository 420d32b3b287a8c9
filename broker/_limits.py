"""A queue's limits: how many of its jobs may start now.

Two limits, either or both: ``concurrency`` (the most jobs of the queue active at once, across
all workers) and a rate (at most ``rate`` starts in any ``per`` seconds). The rate is kept as
evenly spaced slots, one every ``interval = per / rate`` seconds (GCRA): ``next`` is the
monotonic time of the next free slot, and each start takes it and moves it one interval on. So
the starts of a busy queue are spaced by the interval, whatever the window one looks at, with no
burst at a window's edge. A slot nobody took is lost: after a quiet spell the slots start again
from the moment work comes, so no burst builds up while the queue is idle.

The one exception is the timer's own lateness: when jobs were waiting for the next slot (the
timer was armed for it) and the timer ran late, the slots passed meanwhile are still used, up to
``CATCH_UP`` seconds of them; otherwise a timer a fraction of a millisecond late would lower every
rate near a thousand a second.

A worker may also hold a queue back for a while (``throttle``: the service its jobs call is rate
limiting): no job of the queue starts before ``until``, whatever its limits. A queue with no
limits of its own keeps a limiter only while it is held back.
"""

from __future__ import annotations

from typing import Final

from conveyor.protocol import QueueLimits

__all__ = ["CATCH_UP", "Limiter", "limiter"]

CATCH_UP: Final = 0.002
"""Seconds of slots a late timer may still use (jobs were waiting for them)."""
_EARLY: Final = 1e-6
"""Seconds before its slot that a start counts as at its slot: the state machine's times are
wall times moved onto the monotonic clock, which rounds (by about 2e-7 s at today's wall)."""


class Limiter:
    """The limits of one queue and where its rate stands."""

    __slots__ = ("concurrency", "interval", "limits", "next", "timed", "until")

    def __init__(self, limits: QueueLimits, next_slot: float = float("-inf"),
                 until: float = float("-inf")) -> None:
        self.limits = limits
        self.concurrency = limits.concurrency
        self.interval = None if limits.rate is None else limits.per / limits.rate
        """Seconds between two starts (None: no rate limit)."""
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
        if not (self.timed and start >= at - CATCH_UP):
            start = at  # unused slots are lost: no burst after a quiet spell
        # The slots from ``start`` up to ``at``: one at ``start`` and one per interval since.
        slots = int(max(at - start, 0.0) / interval) + 1
        return slots if room < 0 else min(room, slots)

    def took(self, count: int, at: float) -> None:
        """``count`` jobs started at ``at`` (monotonic seconds): they took the next slots."""
        if self.interval is None or count == 0:
            return
        start = self.next
        if not (self.timed and start >= at - CATCH_UP):
            start = max(start, at)
        self.next = start + count * self.interval


def limiter(limits: QueueLimits, old: Limiter | None) -> Limiter | None:
    """The limiter for ``limits`` (None when they limit nothing and the queue is not held
    back); a queue's next slot and hold stay where its ``old`` limiter had them, so changing the
    limits gives no start for free."""
    if limits.rate is None and limits.concurrency is None and (
            old is None or old.until == float("-inf")):
        return None
    if old is None:
        return Limiter(limits)
    return Limiter(limits, old.next, old.until)
