"""The Conveyor broker: an asyncio server holding queues and pushing jobs to workers."""

from ._queues import Queues
from .errors import BrokerError
from .jobs import Consumer, Job, Queue, StateError
from .log import DiskFull, FsyncPolicy, LogDamaged, LogError
from .server import DEFAULT_PORT, Broker, BrokerStatus

__all__ = [
    "DEFAULT_PORT",
    "Broker",
    "BrokerError",
    "BrokerStatus",
    "Consumer",
    "DiskFull",
    "FsyncPolicy",
    "Job",
    "LogDamaged",
    "LogError",
    "Queue",
    "Queues",
    "StateError",
]
