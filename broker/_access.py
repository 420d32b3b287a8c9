"""Permissions: which right each client message needs, on which queue.

A user of the users file may ``produce`` to, ``consume`` from, ``read`` or ``admin`` the queues
its globs match (``_users.User.may``). A message about a job is judged by the job's queue; one
about a job that does not exist needs nothing here (the request handler answers it as unknown).
``get_queues`` needs nothing either: it lists only the queues the user has some right on;
``get_stats`` without a queue and ``find_job`` show only what the user may read; and ``unwait``
only withdraws the connection's own wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from conveyor.protocol import (
    Ack,
    Add,
    AddFlow,
    Authenticate,
    Clean,
    ClientMessage,
    Drain,
    ErrorCode,
    Extend,
    Fail,
    FindJob,
    GetChildren,
    GetCounts,
    GetJob,
    GetJobs,
    GetQueues,
    GetSchedules,
    GetStats,
    Hello,
    Pause,
    Progress,
    Promote,
    ProtocolError,
    Release,
    Remove,
    RemoveSchedule,
    RetryFailed,
    SetLimits,
    SetSchedule,
    SetWindow,
    Subscribe,
    Throttle,
    Unwait,
    Wait,
    Watch,
)

from ._jobs import Job
from ._schedules import ScheduleState
from ._users import Permission, User

__all__ = ["refusal"]

PRODUCE, CONSUME, READ, ADMIN = (Permission.PRODUCE, Permission.CONSUME, Permission.READ,
                                 Permission.ADMIN)


_BY_QUEUE: Final[dict[type, Permission]] = {
    Add: PRODUCE,
    Subscribe: CONSUME, SetWindow: CONSUME, Extend: CONSUME,
    GetCounts: READ, GetJobs: READ, Watch: READ,
    Pause: ADMIN, Drain: ADMIN, Clean: ADMIN,
    SetLimits: ADMIN,
}
"""Messages judged on their ``queue``, and the permission each needs there."""
_BY_JOB: Final[dict[type, Permission]] = {
    Ack: CONSUME, Fail: CONSUME, Release: CONSUME, Progress: CONSUME, Throttle: CONSUME,
    GetJob: READ, Wait: READ,
    Promote: ADMIN, Remove: ADMIN,
}
"""Messages judged on the queue of their ``job``, and the permission each needs there."""
_FREE: Final = frozenset({GetQueues, Unwait, Hello, Authenticate, FindJob, GetSchedules})
"""Messages that need no permission (``get_schedules`` lists only the readable queues')."""


def refusal(user: User, message: ClientMessage, jobs: Mapping[int, Job],
            schedules: Mapping[str, ScheduleState] | None = None) -> ProtocolError | None:
    """The ``FORBIDDEN`` error ``message`` gets from ``user``, or None when it may be sent.

    Looked up by the message's type, as it runs for every message of a logged-in connection; a
    type in none of the tables is refused (a new message must be given its permission here).
    """
    kind = type(message)
    fields: Any = message  # the tables say which of ``queue`` and ``job`` it has
    req: int = getattr(message, "req", 0)  # notifications (ack, fail...) have none
    permission = _BY_QUEUE.get(kind)
    if permission is not None:
        return _on_queue(user, permission, fields.queue, req)
    permission = _BY_JOB.get(kind)
    if permission is not None:
        return _on_job(user, permission, jobs, fields.job, req)
    if isinstance(message, GetStats):
        return None if message.queue is None else _on_queue(user, READ, message.queue, req)
    if isinstance(message, RetryFailed):
        if message.queue is not None:
            return _on_queue(user, ADMIN, message.queue, req)
        return None if message.job is None else _on_job(user, ADMIN, jobs, message.job, req)
    if isinstance(message, GetChildren):
        # The parent's worker reads them too: ``consume`` on its queue will do.
        parent = jobs.get(message.job)
        if parent is not None and user.may(CONSUME, parent.queue):
            return None
        return _on_job(user, READ, jobs, message.job, req)
    if isinstance(message, AddFlow):
        for entry in message.jobs:
            refused = _on_queue(user, PRODUCE, entry.queue, req)
            if refused is not None:
                return refused
        return None
    if isinstance(message, SetSchedule):
        return _on_queue(user, ADMIN, message.schedule.queue, req)
    if isinstance(message, RemoveSchedule):
        state = (schedules or {}).get(message.id)
        return None if state is None else _on_queue(user, ADMIN, state.schedule.queue, req)
    if kind in _FREE:
        return None
    tag = message.__struct_config__.tag
    return ProtocolError(ErrorCode.FORBIDDEN, f"no permission allows {tag!r}", req=req)


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
