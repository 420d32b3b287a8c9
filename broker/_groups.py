"""Groups: a queue's waiting line when jobs of groups (tenants) wait in it, taken in turns.

A queue whose waiting jobs have no group keeps a plain ``WaitingLine``. Once a job of a group
joins it, its line becomes a ``GroupedLine``: one lane per group, each a ``WaitingLine`` of its
own (priority, then first in first out), plus one lane for the jobs of no group; and a ring of
the lanes that have waiting jobs and may start one now. Dispatch takes one job from the lane at
the front of the ring and moves that lane to the back (or out of the ring, when it is empty, at
its cap or waiting for its next rate slot), then the next: round-robin, O(1) per job, whatever
the number of groups. So one group's million jobs do not hold up another's ten.

Each group may have limits of its own (the queue's ``group_concurrency``, ``group_rate`` per
``group_per``), kept by a ``Limiter`` per group; the lane of jobs of no group has none. A lane
taken out of the ring at its cap comes back when one of its jobs stops being active; one
waiting for its next rate slot has a ``GROUP`` deadline at that slot, which brings it back.

A group's state lives only while it has waiting or active jobs, or a rate slot not yet passed
(its deadline forgets it then): a million groups of one job leave nothing behind. When no group
is left, the queue's line is the plain line of its jobs of no group again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import chain
from typing import TYPE_CHECKING

from conveyor.protocol import QueueLimits

from ._deadlines import Deadlines, Kind
from ._limits import Limiter, limiter
from ._waiting import WaitingLine

if TYPE_CHECKING:
    from ._jobs import Job, Queue

__all__ = ["GroupedLine", "Lane", "apply_limits", "group_limiter", "group_part", "grouped",
           "normalized"]


class Lane:
    """The jobs of one group (or of no group) in a grouped line, and the group's state."""

    __slots__ = ("active", "limiter", "line", "name", "queued", "resting")

    def __init__(self, name: str | None, limits: QueueLimits | None) -> None:
        self.name = name
        self.line: WaitingLine[Job] = WaitingLine()
        self.active = 0
        """The group's jobs active now (not counted for the lane of no group)."""
        self.limiter = None if limits is None else group_limiter(limits, None)
        """The group's limits and where its rate stands (None: it has none)."""
        self.queued = False
        """Whether the lane is in the ring."""
        self.resting = False
        """Kept with no waiting or active job, only until its last rate slot passes."""


class GroupedLine:
    """The waiting jobs of a queue that has jobs of groups, in lanes taken in turns."""

    __slots__ = ("_deadlines", "_resting", "_size", "lanes", "plain", "queue", "ring")

    def __init__(self, queue: Queue, deadlines: Deadlines) -> None:
        self.queue = queue
        self._deadlines = deadlines
        self.plain = Lane(None, None)
        """The lane of the jobs of no group."""
        self.lanes: dict[str, Lane] = {}
        """The lanes of the groups, by name."""
        self.ring: deque[Lane] = deque()
        """Lanes whose turn comes, in turn order. A lane in it may have become empty or
        blocked since it joined: it leaves when its turn comes."""
        self._size = 0
        self._resting = 0
        """Lanes kept only until their last rate slot passes (``Lane.resting``)."""

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[Job]:
        """The waiting jobs in the order of the turns: one of each lane in turn (in ring order,
        then the lanes held back by their limits), as they would start if no limit held a group
        back. Each lane's jobs keep their order.

        Lazy: the first jobs (a page of ``get_jobs``) cost as many lanes as they come from, not
        one look at every group."""
        turns: deque[Iterator[Job]] = deque()
        for lane in self._in_turn():
            jobs = iter(lane.line)
            job = next(jobs, None)
            if job is not None:
                yield job
                turns.append(jobs)
        while turns:
            jobs = turns.popleft()
            job = next(jobs, None)
            if job is not None:
                yield job
                turns.append(jobs)

    def _in_turn(self) -> Iterator[Lane]:
        """The lanes with waiting jobs, in the order of their turns (a lane is in the ring
        exactly when it is ``queued``)."""
        for lane in self.ring:
            if lane.line:
                yield lane
        for lane in chain((self.plain,), self.lanes.values()):
            if lane.line and not lane.queued:
                yield lane

    @property
    def groups(self) -> int:
        """Groups with waiting or active jobs (counted as lanes come and go, so that a stats
        call costs the same with a million groups as with one)."""
        return len(self.lanes) - self._resting

    def _lane(self, group: str | None) -> Lane:
        if group is None:
            return self.plain
        lane = self.lanes.get(group)
        if lane is None:
            lane = self.lanes[group] = Lane(group, self.queue.group_limits)
        return lane

    def _queue(self, lane: Lane) -> None:
        if not lane.queued:
            lane.queued = True
            self.ring.append(lane)

    def append(self, job: Job) -> None:
        """Add ``job`` behind every waiting job of its group and priority."""
        group = job.group
        if group is None:
            lane = self.plain
        else:
            lane = self.lanes.get(group)  # type: ignore[assignment]
            if lane is None:
                lane = self.lanes[group] = Lane(group, self.queue.group_limits)
            if lane.resting:
                self._wake(lane)
        lane.line.append(job)
        self._size += 1
        if not lane.queued:
            lane.queued = True
            self.ring.append(lane)

    def appendleft(self, job: Job) -> None:
        """Add ``job`` ahead of every waiting job of its group and priority."""
        lane = self._lane(job.group)
        if lane.resting:
            self._wake(lane)
        lane.line.appendleft(job)
        self._size += 1
        self._queue(lane)

    def extend(self, jobs: list[Job]) -> None:
        """Add ``jobs``, in order, at the tail of their groups and priorities."""
        for job in jobs:
            self.append(job)

    def remove(self, job: Job) -> None:
        """Take ``job`` out of the line (it must be in it)."""
        lane = self._lane(job.group)
        lane.line.remove(job)
        self._size -= 1
        if lane is not self.plain and not lane.line and not lane.active:
            self._idle(lane)

    def clear(self) -> list[Job]:
        """Take every job out; return them (lane after lane)."""
        jobs = list(self)
        self.plain.line.clear()
        self.ring.clear()
        self.plain.queued = False
        self._size = 0
        for lane in list(self.lanes.values()):
            lane.line.clear()
            lane.queued = False
            if not lane.active:
                self._idle(lane)
        return jobs

    def take(self, count: int, at: float) -> list[Job]:
        """Take up to ``count`` jobs that may start at ``at`` (monotonic seconds), one per lane
        in turn; the groups' limits count them as started."""
        out: list[Job] = []
        ring = self.ring
        plain = self.plain
        while count and ring:
            lane = ring.popleft()
            line = lane.line
            if not line:
                lane.queued = False
                continue
            rules = lane.limiter
            if rules is not None and rules.room(lane.active, at) <= 0:
                lane.queued = False
                if rules.concurrency is None or lane.active < rules.concurrency:
                    self._wait_slot(lane, rules)
                # else: one of its jobs stopping (``done``) brings it back.
                continue
            out.append(line.popleft())
            count -= 1
            if lane is not plain:
                lane.active += 1
                if rules is not None:
                    rules.took(1, at)
            if line:
                ring.append(lane)
            else:
                lane.queued = False
        self._size -= len(out)
        return out

    def done(self, job: Job) -> bool:
        """A job of a group stopped being active (acknowledged, failed, handed back or lost);
        return whether its group has a job that may start (back in the ring)."""
        lane = self.lanes.get(job.group)  # type: ignore[arg-type]
        if lane is None:
            return False
        lane.active -= 1
        if lane.line:
            self._queue(lane)
            return True
        if not lane.active:
            if lane.limiter is None:
                self._forget(lane)
            else:
                self._idle(lane)
        return False

    def due(self, group: str) -> bool:
        """The ``GROUP`` deadline of ``group`` came due (its next rate slot): return whether it
        has jobs that may start now (back in the ring)."""
        lane = self.lanes.get(group)
        if lane is None:
            return False
        if lane.line:
            self._queue(lane)
            return True
        if not lane.active:
            self._forget(lane)
        return False

    def set_limits(self, limits: QueueLimits | None) -> None:
        """The groups' limits changed: every group keeps where its rate stands under the new
        ones, and a group they no longer block gets its turn again."""
        for lane in list(self.lanes.values()):
            old = lane.limiter
            lane.limiter = None if limits is None else group_limiter(limits, old)
            if lane.line:
                self._queue(lane)
            elif not lane.active:
                self._idle(lane)

    def _wait_slot(self, lane: Lane, rules: Limiter) -> None:
        key = (self.queue.name, lane.name)
        due = rules.due()
        if self._deadlines.when(Kind.GROUP, key) != due:
            self._deadlines.set(Kind.GROUP, key, due)

    def _idle(self, lane: Lane) -> None:
        """A group has no waiting or active job: forgotten, unless a rate slot of it is still
        to pass (its deadline forgets it then)."""
        rules = lane.limiter
        if rules is not None and rules.interval is not None:
            if not lane.resting:
                lane.resting = True
                self._resting += 1
            self._wait_slot(lane, rules)
        else:
            self._forget(lane)

    def _wake(self, lane: Lane) -> None:
        """A resting lane gets a job again."""
        lane.resting = False
        self._resting -= 1

    def _forget(self, lane: Lane) -> None:
        lanes = self.lanes
        if lanes.get(lane.name) is lane:  # type: ignore[arg-type]
            del lanes[lane.name]  # type: ignore[arg-type]
            if lane.resting:
                lane.resting = False
                self._resting -= 1
            if lane.limiter is not None:
                self._deadlines.cancel(Kind.GROUP, (self.queue.name, lane.name))
            if lane.queued:
                # Emptied by ``remove`` before its turn came: out of the ring now, so that
                # adding and removing jobs of new groups cannot grow the ring without end.
                lane.queued = False
                self.ring.remove(lane)
        if not lanes and self.queue.waiting is self:
            # No group left: the plain line again (the jobs of no group are all in it).
            self.queue.waiting = self.plain.line


def grouped(queue: Queue, deadlines: Deadlines) -> GroupedLine:
    """``queue``'s line as a grouped line (made one, with its jobs of no group, if it was not)."""
    line = queue.waiting
    if isinstance(line, GroupedLine):
        return line
    grouped_line = GroupedLine(queue, deadlines)
    grouped_line.plain.line = line
    grouped_line._size = len(line)
    if line:
        grouped_line._queue(grouped_line.plain)
    queue.waiting = grouped_line
    return grouped_line


def group_limiter(limits: QueueLimits, old: Limiter | None) -> Limiter:
    """A group's limiter for ``limits``, its next slot where ``old`` had it. A group's starts
    are always one interval apart (no catch-up for a late timer), so it keeps no log of its
    last starts: that log, up to ``group_rate`` times each for every busy group, is what a
    queue's own limiter needs to catch up, and would make a group's state grow with its rate."""
    rules = Limiter(limits) if old is None else Limiter(limits, old.next)
    rules.starts = None
    return rules


def normalized(limits: QueueLimits) -> QueueLimits:
    """``limits`` with nothing set read as no limits at all (whatever the periods say)."""
    if (limits.rate is None and limits.concurrency is None and limits.group_rate is None
            and limits.group_concurrency is None):
        return QueueLimits()
    return limits


def group_part(limits: QueueLimits) -> QueueLimits | None:
    """The limits of each group, as the limits of a queue (None: none)."""
    if limits.group_rate is None and limits.group_concurrency is None:
        return None
    return QueueLimits(rate=limits.group_rate, per=limits.group_per,
                       concurrency=limits.group_concurrency)


def apply_limits(queue: Queue, limits: QueueLimits) -> None:
    """Give ``queue`` the limits ``limits`` (normalized), its groups included."""
    queue.limits = limits
    queue.limiter = limiter(limits, queue.limiter)
    group = group_part(limits)
    changed = group != queue.group_limits
    queue.group_limits = group
    if changed and isinstance(queue.waiting, GroupedLine):
        queue.waiting.set_limits(group)

