"""Requests that read or steer a queue, answered straight from the queue state.

``answer`` maps one such request to its reply, or to the ``ProtocolError`` that refuses it; it
does no I/O, so the server only sends what it returns.
"""

from __future__ import annotations

from conveyor.protocol import (
    Clean,
    Count,
    Counts,
    Drain,
    ErrorCode,
    GetCounts,
    GetJob,
    GetJobs,
    GetQueues,
    JobReply,
    Jobs,
    Ok,
    Pause,
    Promote,
    ProtocolError,
    QueueList,
    Remove,
    RetryFailed,
    check_queue_name,
)

from ._queues import Queues
from .jobs import StateError

__all__ = ["Control", "answer"]

Control = (GetJob | GetCounts | GetJobs | Promote | Remove | Pause | RetryFailed | Drain | Clean
           | GetQueues)
"""The requests ``answer`` handles."""

Reply = JobReply | Counts | Jobs | Ok | Count | QueueList


def answer(queues: Queues, request: Control, now: float) -> Reply | ProtocolError:
    """The reply to ``request``, applied to ``queues`` at time ``now``."""
    req = request.req
    queue = getattr(request, "queue", None)
    if queue is not None:
        problem = check_queue_name(queue)
        if problem is not None:
            return ProtocolError(ErrorCode.INVALID_QUEUE, problem, req=req)
    try:
        match request:
            case GetJob(job=job_id):
                job = queues.jobs.get(job_id)
                return JobReply(req=req, job=None if job is None else job.info())
            case GetQueues():
                return QueueList(req=req, queues=queues.summaries(now))
            case GetCounts(queue=name):
                return Counts(req=req, **queues.counts(name))
            case GetJobs(queue=name, state=state, offset=offset, limit=limit):
                jobs, total = queues.list_jobs(name, state, offset, limit)
                return Jobs(req=req, jobs=[job.info() for job in jobs], total=total)
            case Promote(job=job_id):
                return _ok(req, job_id, queues.promote(job_id))
            case Remove(job=job_id):
                return _ok(req, job_id, queues.remove(job_id))
            case Pause(queue=name, paused=paused):
                queues.pause(name, paused)
                return Ok(req=req)
            case RetryFailed(queue=name, job=job_id):
                if (name is None) == (job_id is None):
                    return ProtocolError(ErrorCode.INVALID_FIELD,
                                         "retry_failed takes either a queue or a job", req=req)
                if job_id is not None and job_id not in queues.jobs:
                    return ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id}", req=req)
                return Count(req=req, count=queues.retry_failed(name, job_id))
            case Drain(queue=name):
                return Count(req=req, count=queues.drain(name))
            case Clean(queue=name, state=state, older_than=older_than):
                return Count(req=req, count=queues.clean(name, state, older_than, now))
    except StateError as exc:
        return ProtocolError(ErrorCode.INVALID_STATE, str(exc), req=req)
    raise AssertionError(f"not a control request: {request!r}")


def _ok(req: int, job_id: int, job: object) -> Ok | ProtocolError:
    if job is None:
        return ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id}", req=req)
    return Ok(req=req)
