"""The Conveyor broker: an asyncio server holding queues and pushing jobs to workers."""

from ._log import FsyncPolicy
from ._queues import Queues
from .errors import BrokerError, DiskFull, LogDamaged, LogError, StateError
from .jobs import Consumer, Job, Queue
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
