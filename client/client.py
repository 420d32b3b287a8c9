"""``Client``: add jobs, read them and wait for their results over one connection."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

from protocol import (
    Add,
    Added,
    Counts,
    Finished,
    GetCounts,
    GetJob,
    JobDef,
    JobReply,
    JobState,
    Wait,
    check_queue_name,
)

from .connection import Connection, Reply
from .errors import ConveyorError, JobFailed
from .jobs import JobInfo, decode_job, decode_value, encode_value

__all__ = ["Client", "connect"]

BULK_FRAME_BYTES: Final = 256 * 1024
"""Target frame size when splitting a bulk add (bytes); small frames let dispatch start early."""
BULK_FRAME_JOBS: Final = 2_000
"""Most jobs per frame of a bulk add."""
_FRAME_SLACK: Final = 1024
"""Room left in a frame for the message envelope and queue name (bytes)."""
_JOB_OVERHEAD: Final = 8
"""Bytes a job's envelope adds to its encoded payload."""


class Client:
    """An asyncio client of a Conveyor broker; many calls may be in flight at once."""

    def __init__(self, url: str | None = None, *, name: str = "client",
                 timeout: float = 10.0) -> None:
        self.url = url
        self.name = name
        self.timeout = timeout
        self._connection: Connection | None = None

    async def connect(self) -> Client:
        """Open the connection (done by ``async with`` and ``client.connect()``)."""
        if self._connection is None:
            self._connection = await Connection.open(self.url, name=self.name,
                                                     timeout=self.timeout)
        return self

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> Connection:
        """The open connection."""
        if self._connection is None:
            raise ConveyorError("client is not connected: use 'async with' or 'await connect()'")
        return self._connection

    # Producing.

    async def add(self, queue: str, data: Any) -> int:
        """Add one job; return its id once the broker has accepted it."""
        _check_queue(queue)
        raw = encode_value(data, "job payload")
        if len(raw) + _JOB_OVERHEAD + _FRAME_SLACK > self.connection.max_frame:
            raise ValueError(f"payload is {len(raw)} bytes encoded; the broker's frame limit is "
                             f"{self.connection.max_frame} bytes")
        reply = await self.connection.request(functools.partial(_add, queue, [JobDef(raw)]))
        assert isinstance(reply, Added)
        return reply.ids[0]

    async def add_bulk(self, queue: str, payloads: Iterable[Any]) -> list[int]:
        """Add many jobs; return their ids in input order.

        Payloads are all encoded before anything is sent (an unserializable one raises
        ``TypeError`` naming its index), then split into frames under the broker's frame limit and
        pipelined. Workers start on the first frame's jobs while later frames are still in flight.
        """
        _check_queue(queue)
        connection = self.connection
        jobs = [JobDef(encode_value(data, f"payload {index}"))
                for index, data in enumerate(payloads)]
        limit = connection.max_frame - _FRAME_SLACK
        for index, job in enumerate(jobs):
            if len(job.data) + _JOB_OVERHEAD > limit:
                raise ValueError(f"payload {index} is {len(job.data)} bytes encoded; the "
                                 f"broker's frame limit is {connection.max_frame} bytes")
        futures: list[asyncio.Future[Reply]] = []
        for chunk in _chunks(jobs, min(BULK_FRAME_BYTES, limit)):
            futures.append(connection.request(functools.partial(_add, queue, chunk)))
            await connection.drain()
        ids: list[int] = []
        try:
            for future in futures:
                reply = await future
                assert isinstance(reply, Added)
                ids += reply.ids
        finally:
            for future in futures:
                future.cancel()
        return ids

    # Reading.

    async def get_job(self, job_id: int) -> JobInfo | None:
        """The job's record, or None when the broker does not retain it."""
        reply = await self.connection.request(lambda req: GetJob(req=req, job=job_id))
        assert isinstance(reply, JobReply)
        return None if reply.job is None else decode_job(reply.job)

    async def wait(self, job_id: int, timeout: float | None = None) -> Any:
        """Wait until the job finishes; return its result or raise ``JobFailed``.

        The broker replies when the job completes or fails: nothing polls. Raises
        ``TimeoutError`` after ``timeout`` seconds, and ``UnknownJob`` when no such job is retained.
        """
        future = self.connection.request(lambda req: Wait(req=req, job=job_id))
        try:
            async with asyncio.timeout(timeout):
                reply = await future
        finally:
            future.cancel()
        assert isinstance(reply, Finished)
        job = reply.job
        if job.state is JobState.FAILED:
            raise JobFailed(decode_job(job))
        return decode_value(job.result)

    async def counts(self, queue: str) -> dict[str, int]:
        """Jobs waiting, active and delayed now, completed and failed since the queue was created,
        and the workers subscribed now."""
        _check_queue(queue)
        reply = await self.connection.request(lambda req: GetCounts(req=req, queue=queue))
        assert isinstance(reply, Counts)
        return {
            "waiting": reply.waiting,
            "active": reply.active,
            "delayed": reply.delayed,
            "completed": reply.completed,
            "failed": reply.failed,
            "workers": reply.workers,
        }


async def connect(url: str | None = None, *, name: str = "client",
                  timeout: float = 10.0) -> Client:
    """Open a ``Client`` connected to ``url``."""
    return await Client(url, name=name, timeout=timeout).connect()


def _add(queue: str, jobs: list[JobDef], req: int) -> Add:
    return Add(req=req, queue=queue, jobs=jobs)


def _check_queue(queue: str) -> None:
    problem = check_queue_name(queue)
    if problem is not None:
        raise ValueError(problem)


def _chunks(jobs: list[JobDef], target: int) -> Iterable[list[JobDef]]:
    """Split ``jobs`` into runs of at most ``target`` bytes and ``BULK_FRAME_JOBS`` jobs."""
    chunk: list[JobDef] = []
    size = 0
    for job in jobs:
        job_size = len(job.data) + _JOB_OVERHEAD
        if chunk and (size + job_size > target or len(chunk) >= BULK_FRAME_JOBS):
            yield chunk
            chunk, size = [], 0
        chunk.append(job)
        size += job_size
    if chunk:
        yield chunk
