"""The broker's internals that the test suite drives directly. Not a stable API.

The state machine, the log and the flush are tested without sockets (STYLE.md rule 18): this
module is where the tests find them, so that the rest of the package can stay private.
"""

from ._deadlines import Deadlines, Kind
from ._outbox import Outbox
from ._queues import Queues
from .jobs import Consumer, Job, Queue, StateError, backoff_delay

__all__ = [
    "Consumer",
    "Deadlines",
    "Job",
    "Kind",
    "Outbox",
    "Queue",
    "Queues",
    "StateError",
    "backoff_delay",
]
