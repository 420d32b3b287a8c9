"""Helpers of the security tests (importable as ``security_support``: pytest puts this directory
on ``sys.path``).

- ``write_users``: a users file written by hand, each secret a SCRAM verifier made by ``scramp``
  (the tests do not lean on the broker's own writer).
- ``Raw``: a bare TCP connection that speaks the framing by hand, logs in with SCRAM by hand, and
  may connect from another loopback address (failed logins are limited per address).
- ``client_messages``: one message of every type a client may send, about a given queue and job.
- ``BrokerProcess``: ``conveyor broker`` (or ``security_broker.py``) as a child process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import struct
import subprocess
import sys
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import msgspec
import rawwire
import scramp
from processes import ROOT, STOP_TIMEOUT, check_asyncio_leaks, launch_broker, subprocess_env
from rawwire import REPLY_TIMEOUT

from conveyor.broker import Broker
from conveyor.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Add,
    AddFlow,
    Authenticate,
    Clean,
    ClientMessage,
    Drain,
    ErrorCode,
    Extend,
    Fail,
    FindJob,
    FlowJob,
    GetChildren,
    GetCounts,
    GetJob,
    GetJobs,
    GetQueues,
    GetSchedules,
    GetStats,
    Hello,
    JobDef,
    JobError,
    JobState,
    Pause,
    Progress,
    Promote,
    QueueLimits,
    Release,
    Remove,
    RemoveSchedule,
    RetryFailed,
    Schedule,
    SetLimits,
    SetSchedule,
    SetWindow,
    Subscribe,
    Throttle,
    Unwait,
    Wait,
    Watch,
)

HERE = Path(__file__).resolve().parent
MECHANISM = "SCRAM-SHA-256"
FAILURE_DELAY = 0.05
"""Seconds the in-process brokers of these tests wait before answering a failed login."""
PERMISSIONS = ("produce", "consume", "read", "admin")


# The users file.


def verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier of ``password``, in the users file's (PostgreSQL's) format."""
    salt, stored, server, iterations = scramp.ScramMechanism(MECHANISM).make_auth_info(
        password, iteration_count=4096)
    b64 = base64.b64encode
    return f"{MECHANISM}${iterations}:{b64(salt).decode()}${b64(stored).decode()}:" \
           f"{b64(server).decode()}"


UserSpec = Mapping[str, Any]
"""``{"password": str | None, "produce": [globs], ...}`` (permissions left out: none)."""


def users_toml(users: Mapping[str, UserSpec]) -> str:
    """The users file describing ``users``."""
    lines = ["# conveyor users file (written by the security tests)"]
    for name, spec in users.items():
        lines.append(f"\n[users.{json.dumps(name)}]")
        if spec.get("password") is not None:
            lines.append(f"secret = {json.dumps(verifier(spec['password']))}")
        if spec.get("certificate"):
            lines.append("certificate = true")
        for permission in PERMISSIONS:
            if permission in spec:
                lines.append(f"{permission} = {json.dumps(list(spec[permission]))}")
    return "\n".join(lines) + "\n"


def write_users(path: Path, users: Mapping[str, UserSpec]) -> Path:
    """Write the users file ``path`` describing ``users`` (replacing it at once, as an editor
    that renames would); return ``path``."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(users_toml(users))
    temporary.chmod(0o600)
    temporary.replace(path)
    return path


def url_of(port: int, user: str | None = None, password: str | None = None) -> str:
    """The URL of the broker on ``port``, logged in as ``user`` with ``password``."""
    if user is None:
        return f"conveyor://127.0.0.1:{port}"
    return f"conveyor://{user}:{password}@127.0.0.1:{port}"


# One message of every type.


def client_messages(queue: str, job: int, req: int) -> dict[str, ClientMessage]:
    """One message of every client type, by tag (``retry_failed`` twice: by queue and by job),
    about ``queue`` and ``job``; requests carry ``req``."""
    data = msgspec.Raw(msgspec.msgpack.encode({"n": 1}))
    error = JobError(type="Boom", message="boom")
    return {
        "hello": Hello(version=PROTOCOL_VERSION, client="raw"),
        "authenticate": Authenticate(data="c=biws,r=nonce,p=cHJvb2Y="),
        "add": Add(req=req, queue=queue, jobs=[JobDef(data=data)]),
        "subscribe": Subscribe(req=req, queue=queue, window=1),
        "window": SetWindow(req=req, queue=queue, window=2),
        "ack": Ack(job=job, lease=1, result=data),
        "fail": Fail(job=job, lease=1, error=error),
        "release": Release(job=job, lease=1),
        "progress": Progress(job=job, lease=1, progress=data),
        "extend": Extend(queue=queue),
        "get_job": GetJob(req=req, job=job),
        "wait": Wait(req=req, job=job),
        "unwait": Unwait(job=job, wait=req),
        "get_counts": GetCounts(req=req, queue=queue),
        "get_jobs": GetJobs(req=req, queue=queue, state=JobState.WAITING),
        "get_queues": GetQueues(req=req),
        "get_stats": GetStats(req=req, queue=queue),
        "get_stats_all": GetStats(req=req),
        "find_job": FindJob(req=req, key="no-such-key"),
        "watch": Watch(req=req, queue=queue),
        "promote": Promote(req=req, job=job),
        "remove": Remove(req=req, job=job),
        "pause": Pause(req=req, queue=queue),
        "retry_failed": RetryFailed(req=req, queue=queue),
        "retry_failed_job": RetryFailed(req=req, job=job),
        "drain": Drain(req=req, queue=queue),
        "clean": Clean(req=req, queue=queue, state=JobState.COMPLETED),
        "set_limits": SetLimits(req=req, queue=queue, limits=QueueLimits(concurrency=1)),
        "throttle": Throttle(job=job, lease=1, seconds=60.0),
        "set_schedule": SetSchedule(req=req, schedule=Schedule(id="s1", queue=queue, data=data,
                                                               every=3600.0)),
        # No schedule "s1": judged by a schedule's queue, removing none needs no permission.
        "remove_schedule": RemoveSchedule(req=req, id="s1"),
        "get_schedules": GetSchedules(req=req),
        "add_flow": AddFlow(req=req, jobs=[FlowJob(queue=queue, job=JobDef(data=data))]),
        "get_children": GetChildren(req=req, job=job),
    }


def client_tags() -> set[str]:
    """The tag of every member of ``ClientMessage``."""
    return {member.__struct_config__.tag for member in typing.get_args(ClientMessage)}


def req_of(message: ClientMessage) -> int:
    """The message's ``req``, 0 for a notification."""
    req = getattr(message, "req", 0)
    assert isinstance(req, int)
    return req


# A raw connection.


class Raw(rawwire.Raw):
    """A raw connection (``rawwire``'s) that can log in by hand."""

    @classmethod
    async def open(cls, port: int, *, hello: bool = False, rcvbuf: int | None = None,
                   limit: int = 4096, source: str | None = None) -> Self:
        """Connect to the broker on ``port`` (from the loopback address ``source``, if given);
        say nothing yet, unless ``hello``."""
        return await super().open(port, hello=hello, rcvbuf=rcvbuf, limit=limit, source=source)

    @classmethod
    async def login(cls, port: int, user: str, password: str, *,
                    source: str | None = None) -> Raw:
        """A connection logged in as ``user``; fails unless the broker proves it holds the
        user's verifier."""
        connection = await cls.open(port, source=source)
        try:
            welcome = await connection.authenticate(user, password)
            assert welcome["t"] == "welcome", welcome
            assert welcome["user"] == user, welcome
        except BaseException:
            await connection.close()
            raise
        return connection

    async def authenticate(self, user: str, password: str) -> dict[str, Any]:
        """Run the SCRAM exchange; return the broker's last answer (``welcome`` or ``error``),
        checking the broker's signature in a ``welcome``."""
        scram = scramp.ScramClient([MECHANISM], user, password)
        self.send({"t": "hello", "version": PROTOCOL_VERSION, "client": "raw",
                   "mechanism": MECHANISM, "auth": scram.get_client_first()})
        reply = await self.receive()
        if reply["t"] != "challenge":
            return reply
        scram.set_server_first(reply["data"])
        self.send({"t": "authenticate", "data": scram.get_client_final()})
        reply = await self.receive()
        if reply["t"] == "welcome":
            scram.set_server_final(reply["auth"])
        return reply

    async def rest(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        """Everything the broker writes until it closes the connection (fails if it does not
        within ``timeout`` seconds)."""
        data = b""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await self.reader.read(65536):
                    data += chunk
        return data

    async def is_closed_by_peer(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """Whether the broker closes the connection (within ``REPLY_TIMEOUT``) without sending
        anything more (stricter than ``rawwire``'s, which skips what was sent)."""
        return await self.rest(timeout) == b""


class RawConnections:
    """Opens raw connections and closes them all at the end of the test."""

    def __init__(self) -> None:
        self.opened: list[Raw] = []

    async def open(self, port: int, *, source: str | None = None) -> Raw:
        """A connection that has said nothing yet."""
        connection = await Raw.open(port, source=source)
        self.opened.append(connection)
        return connection

    async def login(self, port: int, user: str, password: str, *,
                    source: str | None = None) -> Raw:
        """A connection logged in as ``user``."""
        connection = await Raw.login(port, user, password, source=source)
        self.opened.append(connection)
        return connection

    async def close(self) -> None:
        for connection in self.opened:
            await connection.close()


def frames(data: bytes) -> list[dict[str, Any]]:
    """The messages in ``data``, a run of whole frames."""
    messages = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        messages.append(msgspec.msgpack.decode(data[4:4 + length]))
        data = data[4 + length:]
    return messages


def is_error(message: Mapping[str, Any], code: ErrorCode, req: int = 0) -> bool:
    """Whether ``message`` is an ``error`` with ``code`` and ``req``."""
    return message.get("t") == "error" and message.get("code") == code \
        and message.get("req") == req


# Broker subprocesses.


CONVEYOR = (sys.executable, "-m", "conveyor.cli")
"""The ``conveyor`` command."""
CONVEYOR_BROKER = (*CONVEYOR, "broker")
"""The ``conveyor broker`` command."""
SECURITY_BROKER = (sys.executable, str(HERE / "security_broker.py"))
"""An in-memory broker whose failed logins are answered after a short delay."""


class BrokerProcess:
    """A broker running as a child process; its stderr goes to ``log_path``."""

    def __init__(self, command: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        self.process, line = launch_broker(command, stderr_path=log_path,
                                           env=subprocess_env(HERE), cwd=log_path.parent)
        self.port = int(line.rpartition(":")[2])

    @property
    def log(self) -> str:
        """What the broker wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the broker."""
        self.process.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM the broker and wait for it (killed if it hangs); its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        check_asyncio_leaks(self.log, "broker")
        return self.process.returncode


def run_conveyor(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``conveyor ARGS`` to completion (30 s at most)."""
    return subprocess.run([*CONVEYOR, *args], cwd=cwd, env=subprocess_env(HERE),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


SecureBroker = Callable[..., Awaitable[Broker]]
"""The ``secure_broker`` fixture: ``await secure_broker(users, **options)``."""
StartBroker = Callable[..., BrokerProcess]
"""The ``broker_process`` fixture: ``broker_process(*command)``."""
