"""Error codes carried by ``Error`` replies, and the protocol's own exception."""

from __future__ import annotations

import enum

__all__ = ["ErrorCode", "ProtocolError"]


class ErrorCode(enum.IntEnum):
    """Why a request was refused. Values are pinned: they are part of the wire format."""

    MALFORMED_FRAME = 1
    """The frame body is not valid MessagePack."""
    FRAME_TOO_LARGE = 2
    """The length prefix exceeds the receiver's frame limit; the connection is closed."""
    UNKNOWN_MESSAGE = 3
    """The message tag is missing or names no message this peer accepts."""
    INVALID_FIELD = 4
    """A field is missing, has the wrong type or is out of range."""
    INVALID_QUEUE = 5
    """The queue name is empty, longer than 255 bytes or contains control characters."""
    VERSION_MISMATCH = 6
    """The peer speaks a protocol version this broker does not support."""
    HANDSHAKE_REQUIRED = 7
    """The first message on a connection must be ``hello``."""
    UNKNOWN_JOB = 8
    """No job with that id exists (or it is no longer retained)."""
    TOO_MANY_CONNECTIONS = 9
    """The broker's connection limit is reached; the connection is closed."""
    SHUTTING_DOWN = 10
    """The broker is stopping and takes no new work."""
    INTERNAL = 11
    """A bug in the broker; the request had no effect."""
    DISK_FULL = 12
    """The broker's disk has no room for the job's log record; nothing was added."""
    INVALID_STATE = 13
    """The job is not in a state the request applies to (removing an active job, say)."""
    SLOW_CONSUMER = 14
    """An event watcher fell too far behind; its connection is closed."""
    INVALID_ARGUMENT = 15
    """A field holds a value the request cannot take: a float that is not a finite number, or a
    payload too large to be delivered within the frame limit."""
    TIMED_OUT = 16
    """The handshake, or a frame, did not complete within the broker's timeout; the connection
    is closed."""
    LIMIT_EXCEEDED = 17
    """The connection is at one of the broker's per-connection limits (pending waits); the
    request had no effect."""
    AUTH_FAILED = 18
    """The user name or secret is wrong, the mechanism is not supported, or the address made too
    many failed attempts; the connection is closed. Which of these is not said."""
    FORBIDDEN = 19
    """The user lacks the permission the request needs on its queue; the request had no effect
    and the connection stays open."""
    AUTH_REQUIRED = 20
    """The broker requires authentication and the ``hello`` had none, or a message other than
    ``authenticate`` came before it completed; the connection is closed."""


class ProtocolError(Exception):
    """A peer broke the wire rules; ``code`` says how."""

    def __init__(self, code: ErrorCode, message: str, *, req: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req = req
        """The id of the request that caused the error, or 0 when it could not be read."""

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r})"
