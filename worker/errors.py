"""Exceptions a handler raises to steer what happens to its job."""

from __future__ import annotations

__all__ = ["InvalidArguments", "RateLimited", "ResultTooLarge", "Retry", "UnknownTask",
           "Unrecoverable"]


class Unrecoverable(Exception):
    """Fail the job now: no retry, whatever attempts it has left."""


class Retry(Exception):
    """Fail this try and retry after ``delay`` seconds (None: after the job's backoff).

    The try counts as an attempt: a job with none left fails.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class RateLimited(Exception):
    """The service the job calls is rate limiting: hand the job back without using an attempt,
    and have the broker start no job of its queue for ``seconds`` (on any worker).

    The job goes back to the head of its queue and runs again once the pause is over; nothing
    is recorded as a failure.
    """

    def __init__(self, seconds: float, message: str = "rate limited") -> None:
        super().__init__(message)
        self.seconds = seconds


class UnknownTask(Unrecoverable):
    """The job's name is not a task of its queue in the worker's registry (or it has no name):
    no worker of this registry could run it, so it fails at once."""


class InvalidArguments(Unrecoverable):
    """The job's payload is not a dict of keyword arguments that fit its task's signature: no
    retry could make them fit, so it fails at once."""


class ResultTooLarge(Unrecoverable):
    """A job's result (or a progress value) does not fit in one frame of the broker's (the
    ``max_frame`` of its ``welcome``), so it cannot be sent.

    The worker fails the try with it, without a retry (the same result would not fit again); a
    progress value too large raises it in the handler, which may catch it. Other jobs on the
    connection are not affected.
    """
