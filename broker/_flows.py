"""Flows: a parent job that waits for its children (``add_flow``).

A flow is added in one request and one log record (``FlowAdded``): the parent and its children,
nested to any depth, each on any queue, with consecutive ids. A job with children waits for them
(``WAITING_CHILDREN``, in its queue's ``parents``), keeping where they stand in its ``Flow``:
how many are left and the outcome of each that finished. When a child finishes, its parent takes
note (``ChildDone``):

- completed: its result is kept for the parent (``get_children``); the last child to finish
  makes the parent waiting (or delayed, until its own ``run_at``);
- failed for good, or removed before it finished: by the child's ``on_failure``, the parent
  fails (``"fail"``, the default), goes on without it (``"ignore"``), or is removed
  (``"remove"``).

A parent that fails or is removed this way is itself a child that finished: its own parent takes
note in turn, up the tree (without recursion: a flow may be deeper than Python's stack). Only a
parent still waiting for its children reacts; the outcome of a child that finishes after its
parent failed is kept all the same.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

import msgspec

from conveyor.protocol import ChildResult, FlowJob, JobError

from ._deadlines import Kind
from ._jobs import (
    COMPLETED,
    DELAYED,
    FAILED,
    JOB_OVERHEAD,
    WAITING,
    WAITING_CHILDREN,
    Flow,
    Job,
    JobOptions,
    job_options,
    join,
    with_run_at,
)
from ._records import ChildDone, FlowAdded, FlowJobRecord

if TYPE_CHECKING:
    from ._queues import Queues

__all__ = ["Flows", "flow_error"]

REMOVED: Final = "Removed"
"""The error type a parent sees for a child removed before it finished."""


def flow_error(jobs: Sequence[FlowJob]) -> str | None:
    """Why ``jobs`` is not a flow (a message naming the field), or None when it is one: the
    first job is the root, every other names an earlier one as its parent, and only the root
    may have an idempotency key."""
    for index, entry in enumerate(jobs):
        if index == 0:
            if entry.parent is not None:
                return "the first job of a flow is its root and has no parent - at `$.jobs[0]`"
            continue
        if entry.parent is None or entry.parent >= index:
            return (f"a job of a flow must name an earlier job as its parent - at "
                    f"`$.jobs[{index}].parent`")
        if entry.job.id is not None:
            return (f"only the root of a flow may have an idempotency key - at "
                    f"`$.jobs[{index}].job.id`")
    return None


class Flows:
    """The flows of one ``Queues``: adding them, and parents taking note of their children."""

    __slots__ = ("_queues", "_settling", "_unsettled")

    def __init__(self, queues: Queues) -> None:
        self._queues = queues
        self._unsettled: deque[Job] = deque()
        """Children that finished, whose parents have yet to take note."""
        self._settling = False

    def create(self, entries: Sequence[FlowJob], now: float) -> list[Job]:
        """Create the jobs of a flow (checked by ``flow_error``) without putting them in line;
        the flush does, once the record is durable (``Queues.enqueue``). When the root's
        idempotency key is taken, nothing is created: the one job returned is its holder."""
        queues = self._queues
        given = [job_options(entry.job, now) for entry in entries]
        key = given[0].key
        if key is not None:
            existing = queues.keyed(key, now)
            if existing is not None:
                return [existing]
        children = [0] * len(entries)
        for entry in entries:
            if entry.parent is not None:
                children[entry.parent] += 1
        first_id = queues.last_id + 1
        ready = now + queues.timeline.offset
        options: list[JobOptions] = []
        out: list[Job] = []
        # Siblings mostly share their options: one object for all of them.
        shared: dict[tuple[int, int | None, int, str], JobOptions] = {}
        added: dict[str, int] = {}
        for index, (entry, option) in enumerate(zip(entries, given, strict=True)):
            parent = None if entry.parent is None else first_id + entry.parent
            if parent is not None or children[index]:
                policy = entry.on_failure if parent is not None else "fail"
                sharing = (id(option), parent, children[index], policy)
                made = shared.get(sharing)
                if made is None:
                    made = shared[sharing] = msgspec.structs.replace(
                        option, parent=parent, children=children[index], on_failure=policy)
                option = made
            job = Job(first_id + index, entry.queue, entry.job.data, now, option)
            job.pending = True
            job.ready = ready
            if children[index]:
                job.state = WAITING_CHILDREN
                job.flow = Flow(children[index])
            elif option.run_at is not None:
                queues.deadlines.set(Kind.DUE, job.id, queues.timeline.monotonic(option.run_at))
            queues.jobs[job.id] = job
            added[entry.queue] = added.get(entry.queue, 0) + 1
            queues.live_bytes += len(job.data) + JOB_OVERHEAD
            options.append(option)
            out.append(job)
        for name, count in added.items():
            queue = queues.queue(name)
            queue.pending += count
            queue.added += count
            queue.added_rate.mark(count, ready)
        if key is not None:
            queues.claim(key, first_id, given[0].dedup_until)
        queues.last_id = first_id + len(out) - 1
        if queues.output.logged:
            queues.output.records.append(FlowAdded(
                first_id=first_id, created_at=now,
                jobs=[FlowJobRecord(queue=job.queue, data=job.data, options=option)
                      for job, option in zip(out, options, strict=True)]))
        return out

    def finished(self, child: Job, now: float) -> None:
        """``child`` (a job with a parent) completed, failed for good, or was removed before it
        finished: its parent takes note, and so on up the tree."""
        self._unsettled.append(child)
        if self._settling:
            return  # a parent's own end, met while settling: the loop below takes it
        self._settling = True
        try:
            while self._unsettled:
                self._settle(self._unsettled.popleft(), now)
        finally:
            self._settling = False

    def _settle(self, child: Job, now: float) -> None:
        queues = self._queues
        parent_id = child.options.parent
        parent = queues.jobs.get(parent_id or 0)
        flow = None if parent is None else parent.flow
        if parent is None or flow is None or child.id in flow.done:
            return
        completed = child.state is COMPLETED and child.finished_at is not None
        if completed:
            outcome = ChildResult(id=child.id, result=child.result)
        else:
            error = child.error if child.state is FAILED and child.error is not None else \
                JobError(type=REMOVED, message=f"job {child.id} was removed before it finished")
            outcome = ChildResult(id=child.id, error=error)
        flow.done[child.id] = outcome
        queues.live_bytes += len(outcome.result)
        waiting = parent.state is WAITING_CHILDREN
        policy = child.options.on_failure
        release = waiting and flow.left == 0 and (completed or policy == "ignore")
        output = queues.output
        if output.logged:
            output.records.append(ChildDone(parent=parent.id, child=child.id, at=now,
                                            result=outcome.result, error=outcome.error,
                                            release=release))
        if not waiting or completed or policy == "ignore":
            if release:
                self.release(parent, now)
            return
        assert outcome.error is not None
        self._react(parent, child, outcome.error, now)

    def _react(self, parent: Job, child: Job, error: JobError, now: float) -> None:
        """``parent`` (waiting for its children) fails, or is removed, by ``child``'s failure."""
        queues = self._queues
        if child.options.on_failure == "remove":
            queues.retention.remove([parent], now=now)
            return
        del queues.queues[parent.queue].parents[parent.id]
        parent.error = JobError(
            type="ChildFailed",
            message=f"child job {child.id} of queue {child.queue!r} failed: "
                    f"{error.type}: {error.message}")
        queues.retention.finish(parent, FAILED, now)

    def reconcile(self) -> None:
        """After replay: make good what a log cut between the records of one pass left undone
        (a torn tail: the pass's last records are lost, its first kept). A parent takes note of
        a finished child it has no outcome of, and reacts to a failure it took note of but did
        not react to, at the child's finish time, with records of its own, as it did live."""
        jobs = self._queues.jobs
        ended = sorted((job for job in jobs.values()
                        if job.options.parent is not None and job.finished_at is not None),
                       key=lambda job: (job.finished_at, job.id))
        for child in ended:
            parent = jobs.get(child.options.parent or 0)
            if parent is None or parent.flow is None or jobs.get(child.id) is not child:
                continue
            now = cast(float, child.finished_at)
            outcome = parent.flow.done.get(child.id)
            if outcome is None:
                self.finished(child, now)
            elif (parent.state is WAITING_CHILDREN and outcome.error is not None
                  and child.options.on_failure != "ignore"):
                self._settling = True  # the parent's own end is settled below, at ``now``
                try:
                    self._react(parent, child, outcome.error, now)
                    while self._unsettled:
                        self._settle(self._unsettled.popleft(), now)
                finally:
                    self._settling = False

    def release(self, parent: Job, now: float) -> None:
        """Every child of ``parent`` finished: it becomes waiting, or delayed until its
        ``run_at``."""
        queues = self._queues
        queue = queues.queues[parent.queue]
        del queue.parents[parent.id]
        run_at = parent.options.run_at
        if run_at is not None and run_at > now:
            parent.state = DELAYED
            queues.delay_job(queue, parent)
            return
        parent.options = with_run_at(parent.options, run_at=None)
        parent.state = WAITING
        parent.ready = queues.timeline.monotonic(now)
        join(queues.line(queue, parent), parent)
        queues.dispatcher.wake(queue)

    def page(self, parent: Job, offset: int, room: int) -> tuple[list[ChildResult], bool]:
        """The outcomes of ``parent``'s finished children in the order they finished, from the
        ``offset``-th on, as many as fit in about ``room`` bytes; and whether more are left.
        (Outcomes are only ever added at the end: offsets stay put while children finish.)"""
        flow = parent.flow
        if flow is None or offset >= len(flow.done):
            return [], False
        out: list[ChildResult] = []
        size = 0
        for outcome in itertools.islice(flow.done.values(), offset, None):
            size += _OUTCOME_OVERHEAD + len(outcome.result) + _error_size(outcome.error)
            if out and size > room:
                return out, True
            out.append(outcome)
        return out, False


_OUTCOME_OVERHEAD: Final = 32
"""Bytes a child's outcome takes in a ``children`` reply beyond its result and error."""
_ERROR_OVERHEAD: Final = 48
"""Bytes an error takes beyond its strings' UTF-8: its key, its map's keys, the strings' heads."""


def _error_size(error: JobError | None) -> int:
    if error is None:
        return 0
    # A code point takes up to 4 bytes in UTF-8.
    return _ERROR_OVERHEAD + 4 * (len(error.type) + len(error.message) + len(error.traceback))

