"""The client's exceptions. ``ConveyorError`` is the root; wire error codes map to subclasses."""

from __future__ import annotations

from conveyor.protocol import ErrorCode

from .jobs import JobInfo

__all__ = [
    "AuthenticationFailed",
    "BulkAddFailed",
    "ConnectionLost",
    "ConveyorError",
    "DiskFull",
    "Forbidden",
    "InvalidQueue",
    "InvalidState",
    "JobFailed",
    "LimitExceeded",
    "ProtocolViolation",
    "RequestRefused",
    "ShuttingDown",
    "UnknownJob",
    "VersionMismatch",
    "error_for",
]


class ConveyorError(Exception):
    """Root of every exception the client raises on purpose."""


class ConnectionLost(ConveyorError):
    """The connection to the broker closed; every call in flight on it fails with this."""


class RequestRefused(ConveyorError):
    """The broker refused a request; ``code`` is the wire error code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProtocolViolation(RequestRefused):
    """The broker could not read what was sent (malformed, oversize, unknown or invalid)."""


class InvalidQueue(RequestRefused):
    """The queue name was refused."""


class UnknownJob(RequestRefused):
    """No such job is retained by the broker."""


class VersionMismatch(RequestRefused):
    """The broker speaks another protocol version."""


class DiskFull(RequestRefused):
    """The broker's disk had no room for the jobs' log record; none of them was added."""


class LimitExceeded(RequestRefused):
    """The request would take the connection past one of the broker's limits (for instance
    ``--max-waits`` pending waits); it was refused and the connection stays usable."""


class InvalidState(RequestRefused):
    """The job is not in a state the request applies to (removing an active job, say)."""


class AuthenticationFailed(RequestRefused):
    """The broker did not let the client in: a wrong user name or secret, no credentials where
    the broker requires them, or too many failed attempts from this address. Also raised when
    the broker could not prove that it holds the user's secret."""


class Forbidden(RequestRefused):
    """The user lacks the permission the request needs on its queue; nothing was done and the
    connection stays usable."""


class ShuttingDown(RequestRefused):
    """The broker is shutting down and takes no new jobs."""


class BulkAddFailed(ConveyorError):
    """Part of a bulk add was added, and the rest failed (a frame refused, or the connection lost).

    ``added_ids``: the ids of the jobs that were added, in input order. ``ids``: one entry per
    job given, its id, or None where the job was not added. ``error``: what made the rest fail
    (also the ``__cause__``): ``DiskFull``, ``ProtocolViolation``, ``ConnectionLost``...

    After ``ConnectionLost``, a job listed as not added may have been added all the same (its
    frame reached the broker, its reply was lost with the connection): adding the jobs again
    with idempotency keys (``id``) adds each at most once.
    """

    def __init__(self, error: Exception, ids: list[int | None]) -> None:
        self.error = error
        self.ids = ids
        self.added_ids = [job_id for job_id in ids if job_id is not None]
        super().__init__(f"{len(self.added_ids)} of {len(ids)} jobs were added, then the bulk "
                         f"add failed: {error}")


class JobFailed(ConveyorError):
    """The awaited job ended as failed. ``job.error`` carries the type, message and traceback."""

    def __init__(self, job: JobInfo) -> None:
        error = job.error
        detail = f"{error.type}: {error.message}" if error is not None else "failed"
        super().__init__(f"job {job.id} failed: {detail}")
        self.job = job
        self.error_type = error.type if error is not None else ""
        self.error_message = error.message if error is not None else ""
        self.traceback = error.traceback if error is not None else ""


_BY_CODE: dict[int, type[RequestRefused]] = {
    ErrorCode.MALFORMED_FRAME: ProtocolViolation,
    ErrorCode.FRAME_TOO_LARGE: ProtocolViolation,
    ErrorCode.UNKNOWN_MESSAGE: ProtocolViolation,
    ErrorCode.INVALID_FIELD: ProtocolViolation,
    ErrorCode.HANDSHAKE_REQUIRED: ProtocolViolation,
    ErrorCode.INVALID_QUEUE: InvalidQueue,
    ErrorCode.UNKNOWN_JOB: UnknownJob,
    ErrorCode.VERSION_MISMATCH: VersionMismatch,
    ErrorCode.DISK_FULL: DiskFull,
    ErrorCode.SHUTTING_DOWN: ShuttingDown,
    ErrorCode.INVALID_STATE: InvalidState,
    ErrorCode.INVALID_ARGUMENT: ProtocolViolation,
    ErrorCode.TIMED_OUT: ProtocolViolation,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
    ErrorCode.AUTH_FAILED: AuthenticationFailed,
    ErrorCode.AUTH_REQUIRED: AuthenticationFailed,
    ErrorCode.FORBIDDEN: Forbidden,
}


def error_for(code: int, message: str) -> RequestRefused:
    """The exception for a wire error code."""
    try:
        name = ErrorCode(code).name
    except ValueError:
        name = f"error {code}"
    return _BY_CODE.get(code, RequestRefused)(code, f"{name}: {message}")
