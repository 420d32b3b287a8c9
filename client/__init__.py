"""The Conveyor client: add jobs to a broker, read them and wait for their results."""

from protocol import Backoff, JobError, JobState

from .client import Client, connect
from .connection import Connection, ConnectionStatus
from .errors import (
    ConnectionLost,
    ConveyorError,
    DiskFull,
    InvalidQueue,
    InvalidState,
    JobFailed,
    ProtocolViolation,
    RequestRefused,
    ShuttingDown,
    UnknownJob,
    VersionMismatch,
)
from .events import EventsLost, EventStream, JobEvent
from .jobs import JobInfo
from .options import JobSpec, exponential, fixed
from .urls import DEFAULT_URL, URL_ENV, parse_url

__all__ = [
    "DEFAULT_URL",
    "URL_ENV",
    "Backoff",
    "Client",
    "Connection",
    "ConnectionLost",
    "ConnectionStatus",
    "ConveyorError",
    "DiskFull",
    "EventStream",
    "EventsLost",
    "InvalidQueue",
    "InvalidState",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobInfo",
    "JobSpec",
    "JobState",
    "ProtocolViolation",
    "RequestRefused",
    "ShuttingDown",
    "UnknownJob",
    "VersionMismatch",
    "connect",
    "exponential",
    "fixed",
    "parse_url",
]
