"""Job records as the client sees them, with payloads decoded."""

from __future__ import annotations

from typing import Any

import msgspec

from conveyor.protocol import JobError, JobState
from conveyor.protocol import JobInfo as WireJobInfo

__all__ = ["JobInfo", "decode_job", "decode_value", "encode_value", "encode_values"]

_encoder = msgspec.msgpack.Encoder()
_raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])


class JobInfo(msgspec.Struct, frozen=True):
    """A job's record: its payload, state and (once finished) result or error."""

    id: int
    queue: str
    state: JobState
    attempt: int
    data: Any
    created_at: float
    finished_at: float | None = None
    result: Any = None
    error: JobError | None = None
    progress: Any = None
    key: str | None = None
    """The idempotency key the job was added with."""
    priority: int = 0
    attempts: int = 1
    run_at: float | None = None
    """When a delayed job becomes waiting."""
    name: str | None = None
    """The job's name (what kind of job it is), when it has one."""
    parent: int | None = None
    """The job's parent, for a child of a flow."""
    children: int = 0
    """How many children the job has (the parent of a flow)."""
    children_left: int = 0
    """How many of them have not finished yet."""
    group: str | None = None
    """The group (tenant) the job belongs to, when it has one."""


def encode_value(value: object, what: str) -> msgspec.Raw:
    """Encode a payload or result; raise ``TypeError`` naming ``what`` when it cannot be."""
    try:
        return msgspec.Raw(_encoder.encode(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what} cannot be serialized to MessagePack: {exc}") from None


def encode_values(values: list[Any], what: str) -> list[msgspec.Raw]:
    """Encode many values at once; raise ``TypeError`` naming ``what`` and the index of the first
    that cannot be encoded.

    One encode of the whole list, then split back into one raw value per item without copying:
    several times faster than encoding them one by one.
    """
    try:
        blob = _encoder.encode(values)
    except (TypeError, ValueError, OverflowError):
        for index, value in enumerate(values):
            encode_value(value, f"{what} {index}")
        raise
    return _raw_list.decode(blob)


def decode_value(raw: msgspec.Raw) -> Any:
    """Decode a payload, result or progress value."""
    return msgspec.msgpack.decode(raw)


def decode_job(job: WireJobInfo) -> JobInfo:
    """The wire record with its values decoded."""
    return JobInfo(
        id=job.id,
        queue=job.queue,
        state=job.state,
        attempt=job.attempt,
        data=decode_value(job.data),
        created_at=job.created_at,
        finished_at=job.finished_at,
        result=decode_value(job.result),
        error=job.error,
        progress=decode_value(job.progress),
        key=job.key,
        priority=job.priority,
        attempts=job.attempts,
        run_at=job.run_at,
        name=job.name,
        parent=job.parent,
        children=job.children,
        children_left=job.children_left,
        group=job.group,
    )
