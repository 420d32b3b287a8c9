"""The Conveyor worker: run the jobs of a queue with a handler, or of a registry's queues with
its tasks."""

from .errors import (
    InvalidArguments,
    RateLimited,
    ResultTooLarge,
    Retry,
    UnknownTask,
    Unrecoverable,
)
from .job import Job, current_job
from .tasks import Task, Tasks
from .worker import DEFAULT_GRACE, DEFAULT_LEASE, Handler, Worker, WorkerStatus

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LEASE",
    "Handler",
    "InvalidArguments",
    "Job",
    "RateLimited",
    "ResultTooLarge",
    "Retry",
    "Task",
    "Tasks",
    "UnknownTask",
    "Unrecoverable",
    "Worker",
    "WorkerStatus",
    "current_job",
]
