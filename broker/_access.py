"""Permissions: which right each client message needs, on which queue.

A user of the users file may ``produce`` to, ``consume`` from, ``read`` or ``admin`` the queues
its globs match (``_users.User.may``). A message about a job is judged by the job's queue; one
about a job that does not exist needs nothing here (the request handler answers it as unknown).
``get_queues`` needs nothing either: it lists only the queues the user has some right on, and
``unwait`` only withdraws the connection's own wait.
"""

from __future__ import annotations

from collections.abc import Mapping

from conveyor.protocol import (
    Ack,
    Add,
    Authenticate,
    Clean,
    ClientMessage,
    Drain,
    ErrorCode,
    Extend,
    Fail,
    GetCounts,
    GetJob,
    GetJobs,
    GetQueues,
    Hello,
    Pause,
    Progress,
    Promote,
    ProtocolError,
    Release,
    Remove,
    RetryFailed,
    SetWindow,
    Subscribe,
    Unwait,
    Wait,
    Watch,
)

from ._jobs import Job
from ._users import Permission, User

__all__ = ["refusal"]

PRODUCE, CONSUME, READ, ADMIN = (Permission.PRODUCE, Permission.CONSUME, Permission.READ,
                                 Permission.ADMIN)


def refusal(user: User, message: ClientMessage, jobs: Mapping[int, Job]) -> ProtocolError | None:
    """The ``FORBIDDEN`` error ``message`` gets from ``user``, or None when it may be sent."""
    match message:
        case Add(req=req, queue=queue):
            return _on_queue(user, PRODUCE, queue, req)
        case Subscribe(req=req, queue=queue) | SetWindow(req=req, queue=queue):
            return _on_queue(user, CONSUME, queue, req)
        case Extend(queue=queue):
            return _on_queue(user, CONSUME, queue, 0)
        case Ack(job=job) | Fail(job=job) | Release(job=job) | Progress(job=job):
            return _on_job(user, CONSUME, jobs, job, 0)
        case GetJob(req=req, job=job) | Wait(req=req, job=job):
            return _on_job(user, READ, jobs, job, req)
        case GetCounts(req=req, queue=queue) | GetJobs(req=req, queue=queue) | Watch(
                req=req, queue=queue):
            return _on_queue(user, READ, queue, req)
        case Promote(req=req, job=job) | Remove(req=req, job=job):
            return _on_job(user, ADMIN, jobs, job, req)
        case RetryFailed(req=req, queue=queue, job=job):
            if queue is not None:
                return _on_queue(user, ADMIN, queue, req)
            return None if job is None else _on_job(user, ADMIN, jobs, job, req)
        case Pause(req=req, queue=queue) | Drain(req=req, queue=queue) | Clean(
                req=req, queue=queue):
            return _on_queue(user, ADMIN, queue, req)
        case GetQueues() | Unwait() | Hello() | Authenticate():
            return None
    return None


def _on_queue(user: User, permission: Permission, queue: str, req: int) -> ProtocolError | None:
    if user.may(permission, queue):
        return None
    return ProtocolError(
        ErrorCode.FORBIDDEN,
        f"user {user.name!r} lacks the {permission.value!r} permission on queue {queue!r}",
        req=req)


def _on_job(user: User, permission: Permission, jobs: Mapping[int, Job], job_id: int,
            req: int) -> ProtocolError | None:
    job = jobs.get(job_id)
    if job is None or user.may(permission, job.queue):
        return None
    # The queue is not named: a user without rights on it need not learn its name.
    return ProtocolError(
        ErrorCode.FORBIDDEN,
        f"user {user.name!r} lacks the {permission.value!r} permission on the queue of job "
        f"{job_id}", req=req)
