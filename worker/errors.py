"""Exceptions a handler raises to steer what happens to its job."""

from __future__ import annotations

__all__ = ["InvalidArguments", "Retry", "UnknownTask", "Unrecoverable"]


class Unrecoverable(Exception):
    """Fail the job now: no retry, whatever attempts it has left."""


class Retry(Exception):
    """Fail this try and retry after ``delay`` seconds (None: after the job's backoff).

    The try counts as an attempt: a job with none left fails.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class UnknownTask(Unrecoverable):
    """The job's name is not a task of its queue in the worker's registry (or it has no name):
    no worker of this registry could run it, so it fails at once."""


class InvalidArguments(Unrecoverable):
    """The job's payload is not a dict of keyword arguments that fit its task's signature: no
    retry could make them fit, so it fails at once."""
