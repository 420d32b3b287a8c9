"""The Conveyor client: add jobs to a broker, read them and wait for their results."""

from conveyor.protocol import Backoff, JobError, JobState, QueueSummary

from .client import Client, connect
from .connection import Connection, ConnectionStatus, Push
from .errors import (
    AuthenticationFailed,
    BulkAddFailed,
    ConnectionLost,
    ConveyorError,
    DiskFull,
    Forbidden,
    InvalidQueue,
    InvalidState,
    JobFailed,
    LimitExceeded,
    ProtocolViolation,
    RequestRefused,
    ShuttingDown,
    UnknownJob,
    VersionMismatch,
)
from .events import EventsLost, EventStream, JobEvent
from .jobs import JobInfo, decode_value, encode_value
from .options import JobOptions, JobSpec, exponential, fixed
from .sync import SyncClient
from .tls import client_context as tls_context
from .urls import DEFAULT_URL, URL_ENV, BrokerAddress, parse_url

__all__ = [
    "DEFAULT_URL",
    "URL_ENV",
    "AuthenticationFailed",
    "Backoff",
    "BrokerAddress",
    "BulkAddFailed",
    "Client",
    "Connection",
    "ConnectionLost",
    "ConnectionStatus",
    "ConveyorError",
    "DiskFull",
    "EventStream",
    "EventsLost",
    "Forbidden",
    "InvalidQueue",
    "InvalidState",
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobInfo",
    "JobOptions",
    "JobSpec",
    "JobState",
    "LimitExceeded",
    "ProtocolViolation",
    "Push",
    "QueueSummary",
    "RequestRefused",
    "ShuttingDown",
    "SyncClient",
    "UnknownJob",
    "VersionMismatch",
    "connect",
    "decode_value",
    "encode_value",
    "exponential",
    "fixed",
    "parse_url",
    "tls_context",
]
