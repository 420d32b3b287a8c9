"""Flows: a parent job with children (``Client.add_flow``), and the ids they were given."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Unpack, get_args

from conveyor.protocol import (
    ChildPolicy,
    Children,
    ChildResult,
    FlowJob,
    GetChildren,
    JobDef,
    JobError,
)

from .frames import check_fits, check_queue
from .jobs import decode_value, encode_value
from .options import JobOptions, job_def

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["AddedFlow", "Flow", "added_flow", "children_errors", "children_results",
           "flow_jobs"]

_POLICIES = get_args(ChildPolicy)


class Flow:
    """One job of a flow and its children (each a ``Flow``, nested to any depth, on any queue).

    The job waits until every child finished, then runs; its handler reads their results with
    ``job.children_results()``. ``on_failure`` says what this job failing for good (or being
    removed before it finished) does to its parent: ``"fail"`` it (the default), ``"ignore"``
    (the parent runs once its other children are done) or ``"remove"`` it. ``options`` are
    those of ``Client.add``; only the root of a flow may have an ``id`` (idempotency key).
    """

    __slots__ = ("children", "data", "on_failure", "options", "queue")

    def __init__(self, queue: str, data: Any, *, children: Sequence[Flow] = (),
                 on_failure: Literal["fail", "ignore", "remove"] = "fail",
                 **options: Unpack[JobOptions]) -> None:
        self.queue = queue
        self.data = data
        self.children = tuple(children)
        self.on_failure = on_failure
        self.options = options

    def __repr__(self) -> str:
        return f"<Flow on {self.queue!r} with {len(self.children)} children>"


@dataclass(slots=True)
class AddedFlow:
    """The ids a flow's jobs were given, in the shape of the ``Flow``. When the root's
    idempotency key was taken already, ``id`` is that job's and ``children`` is empty."""

    id: int
    children: list[AddedFlow] = field(default_factory=list)


def flow_jobs(root: Flow, max_frame: int) -> tuple[list[FlowJob], list[int]]:
    """The wire form of a flow: its jobs, parents before their children (depth first), each
    naming its parent by index; and each job's parent index (-1 for the root). Raises
    ``TypeError`` for a payload that cannot be serialized and ``ValueError`` for a bad option
    (naming the job by its place), before anything is sent."""
    jobs: list[FlowJob] = []
    parents: list[int] = []
    checked: set[str] = set()
    stack: list[tuple[Flow, int]] = [(root, -1)]  # a flow may be deeper than Python's stack
    most = max_frame // _LEAST_JOB
    while stack:
        node, parent = stack.pop()
        index = len(jobs)
        if index >= most:
            # (A Flow made its own descendant would never end.)
            raise ValueError(f"the flow has over {most:,} jobs: more than fit in the broker's "
                             f"frame limit of {max_frame:,} bytes (a flow is added in one frame)")
        if not isinstance(node, Flow):
            raise TypeError(f"{_where(index)} is a {type(node).__name__}, not a Flow")
        queue = node.queue
        if queue not in checked:
            check_queue(queue)
            checked.add(queue)
        options = node.options
        try:
            payload = encode_value(node.data, "payload")
            job = job_def(payload, **options) if options else JobDef(data=payload)
            if parent >= 0 and options.get("id") is not None:
                raise ValueError("only the root of a flow may have an id")
            if node.on_failure not in _POLICIES:
                raise ValueError(f"on_failure must be one of {', '.join(_POLICIES)}, "
                                 f"got {node.on_failure!r}")
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{_where(index)}: {exc}") from None
        check_fits(queue, job, max_frame, index=index)
        if parent < 0:
            jobs.append(FlowJob(queue=queue, job=job))
        elif node.on_failure == "fail":
            jobs.append(FlowJob(queue=queue, job=job, parent=parent))
        else:
            jobs.append(FlowJob(queue=queue, job=job, parent=parent,
                                on_failure=node.on_failure))
        parents.append(parent)
        stack += [(child, index) for child in reversed(node.children)]
    return jobs, parents


_LEAST_JOB = 16
"""Bytes the smallest job of a flow takes in an ``add_flow`` frame (its queue, its data and its
parent, with their keys)."""


def _where(index: int) -> str:
    return f"job {index} of the flow"


def added_flow(ids: list[int], parents: list[int]) -> AddedFlow:
    """The ids of a flow's jobs (the ``added`` reply) in the flow's shape."""
    nodes = [AddedFlow(job_id) for job_id in ids]
    if len(ids) == len(parents):
        for node, parent in zip(nodes[1:], parents[1:], strict=True):
            nodes[parent].children.append(node)
    return nodes[0]


async def _children(connection: Connection, job_id: int) -> list[ChildResult]:
    """The outcomes of job ``job_id``'s finished children, every page of them."""
    out: list[ChildResult] = []
    while True:
        reply = await connection.request(functools.partial(_get_children, job_id, len(out)))
        assert isinstance(reply, Children)
        out += reply.children
        if not reply.more or not reply.children:
            return out


def _get_children(job_id: int, offset: int, req: int) -> GetChildren:
    return GetChildren(req=req, job=job_id, offset=offset)


async def children_results(connection: Connection, job_id: int) -> dict[int, Any]:
    """The results of job ``job_id``'s children that completed, by child id, read over
    ``connection`` (empty for a job that is not the parent of a flow)."""
    return {child.id: decode_value(child.result)
            for child in await _children(connection, job_id) if child.error is None}


async def children_errors(connection: Connection, job_id: int) -> dict[int, JobError]:
    """The errors of job ``job_id``'s children that failed for good or were removed before
    they finished, by child id, read over ``connection``."""
    return {child.id: child.error
            for child in await _children(connection, job_id) if child.error is not None}
