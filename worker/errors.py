"""Exceptions a handler raises to steer what happens to its job."""

from __future__ import annotations

__all__ = ["Retry", "Unrecoverable"]


class Unrecoverable(Exception):
    """Fail the job now: no retry, whatever attempts it has left."""


class Retry(Exception):
    """Fail this try and retry after ``delay`` seconds (None: after the job's backoff).

    The try counts as an attempt: a job with none left fails.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay
