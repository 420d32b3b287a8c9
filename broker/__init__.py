"""The Conveyor broker: an asyncio server holding queues and pushing jobs to workers."""

from .queues import Consumer, Job, Queue, Queues
from .server import DEFAULT_PORT, Broker, BrokerStatus

__all__ = ["DEFAULT_PORT", "Broker", "BrokerStatus", "Consumer", "Job", "Queue", "Queues"]
