"""The Conveyor client: add jobs to a broker, read them and wait for their results."""

from protocol import JobError, JobState

from .client import Client, connect
from .connection import Connection, ConnectionStatus
from .errors import (
    ConnectionLost,
    ConveyorError,
    DiskFull,
    InvalidQueue,
    JobFailed,
    ProtocolViolation,
    RequestRefused,
    ShuttingDown,
    UnknownJob,
    VersionMismatch,
)
from .jobs import JobInfo
from .urls import DEFAULT_URL, URL_ENV, parse_url

__all__ = [
    "DEFAULT_URL",
    "URL_ENV",
    "Client",
    "Connection",
    "ConnectionLost",
    "ConnectionStatus",
    "ConveyorError",
    "DiskFull",
    "InvalidQueue",
    "JobError",
    "JobFailed",
    "JobInfo",
    "JobState",
    "ProtocolViolation",
    "RequestRefused",
    "ShuttingDown",
    "UnknownJob",
    "VersionMismatch",
    "connect",
    "parse_url",
]
