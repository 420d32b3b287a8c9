"""The Conveyor client: add jobs to a broker, read them and wait for their results."""

from conveyor.protocol import (
    Backoff,
    BrokerStats,
    Histogram,
    JobError,
    JobState,
    QueueStats,
    QueueSummary,
    Rates,
    Stats,
    Subscription,
    WorkerInfo,
)

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
    "BrokerStats",
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
    "Histogram",
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
    "QueueStats",
    "QueueSummary",
    "Rates",
    "RequestRefused",
    "ShuttingDown",
    "Stats",
    "Subscription",
    "SyncClient",
    "UnknownJob",
    "VersionMismatch",
    "WorkerInfo",
    "connect",
    "decode_value",
    "encode_value",
    "exponential",
    "fixed",
    "parse_url",
    "tls_context",
]
