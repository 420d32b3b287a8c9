"""The Conveyor worker: run a handler for each job of a queue."""

from .job import Job
from .worker import DEFAULT_GRACE, Handler, Worker, WorkerStatus

__all__ = ["DEFAULT_GRACE", "Handler", "Job", "Worker", "WorkerStatus"]
