"""The Conveyor broker: an asyncio server holding queues and pushing jobs to workers.

Embed it with ``Broker`` (``await broker.start()``, ``broker.port``, ``await broker.close()``), or
run it with ``python -m conveyor.broker``. Everything else in this package is private; the tests
reach the internals they drive through ``conveyor.broker.testing``.
"""

from ._errors import BrokerError, DiskFull, LogDamaged, LogError
from ._log import FsyncPolicy
from ._server import Broker, BrokerStatus
from ._tls import server_context
from ._users import Permission, User, Users, UsersError, make_secret, write_users

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerStatus",
    "DiskFull",
    "FsyncPolicy",
    "LogDamaged",
    "LogError",
    "Permission",
    "User",
    "Users",
    "UsersError",
    "make_secret",
    "server_context",
    "write_users",
]
