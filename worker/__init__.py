"""The Conveyor worker: run a handler for each job of a queue."""

from .errors import Retry, Unrecoverable
from .job import Job
from .worker import DEFAULT_GRACE, DEFAULT_LEASE, Handler, Worker, WorkerStatus

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_LEASE",
    "Handler",
    "Job",
    "Retry",
    "Unrecoverable",
    "Worker",
    "WorkerStatus",
]
