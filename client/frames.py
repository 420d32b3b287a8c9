"""Splitting adds into frames the broker accepts: every ``add`` frame stays within the frame
limit of the broker's ``welcome`` (``max_frame``, bytes of MessagePack body).

A job's size is computed exactly: the jobs of a bulk that share the call's options differ only
by their payloads, so each is its payload's encoded size plus that of the options (encoded once);
a ``JobSpec`` is encoded on its own. The frame's envelope (tag, request id, queue name, the list
header) is counted at its largest: request id 2**63 - 1 and a 3-byte list header.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec

from conveyor.protocol import NIL, Add, JobDef, check_queue_name, deliverable_payload

from .jobs import encode_values
from .options import JobOptions, JobSpec, job_def

__all__ = [
    "BULK_FRAME_BYTES",
    "BULK_FRAME_JOBS",
    "FIRST_FRAME_JOBS",
    "BulkJobs",
    "add_envelope",
    "bulk_jobs",
    "check_fits",
    "check_queue",
    "frames",
    "job_size",
]

BULK_FRAME_BYTES: Final = 256 * 1024
"""Target frame size when splitting a bulk add (bytes); small frames let dispatch start early."""
BULK_FRAME_JOBS: Final = 2_000
"""Most jobs per frame of a bulk add."""
FIRST_FRAME_JOBS: Final = 64
"""Most jobs in a bulk add's first frame: it leaves at once, and idle workers start on it."""

_MAX_REQ: Final = (1 << 63) - 1
_ADD_SLACK: Final = 4096
"""Bytes an ``add`` frame of one job takes beyond its payload, at most (about 2,100 with the
longest queue name, id and name): a payload this far under the limit is not measured again."""
_LIST_HEADER_GROWTH: Final = 2
"""Bytes a list header of 16 to 65,535 items takes beyond the 1 byte of a shorter one."""
_encoder: Final = msgspec.msgpack.Encoder()


def check_queue(queue: str) -> None:
    """Raise ``ValueError`` for a queue name the broker would refuse."""
    problem = check_queue_name(queue)
    if problem is not None:
        raise ValueError(problem)


def add_envelope(queue: str) -> int:
    """Bytes of an ``add`` frame of ``queue`` holding no job (at most; a list header of 1 byte)."""
    return len(_encoder.encode(Add(req=_MAX_REQ, queue=queue, jobs=[])))


def job_size(job: JobDef) -> int:
    """Bytes ``job`` takes in an ``add`` frame, exactly."""
    return len(_encoder.encode(job))


def check_fits(queue: str, job: JobDef, max_frame: int, *, index: int | None = None) -> None:
    """Raise ``ValueError`` when ``job`` of ``queue`` cannot be sent in an ``add`` frame of
    ``max_frame`` bytes on its own, or could not be delivered in a ``deliver`` frame of that
    size (the broker would refuse it). ``index``: the job's place in a bulk, named in the
    message."""
    payload = len(job.data)
    if payload + _ADD_SLACK <= max_frame:
        return
    which = "" if index is None else f" {index}"
    size = add_envelope(queue) + job_size(job)
    if size > max_frame:
        raise ValueError(f"job{which} is {size:,} bytes encoded (its payload {payload:,}); the "
                         f"broker's frame limit is {max_frame:,} bytes")
    # A delivery says more around a payload than an add does: the broker refuses a payload whose
    # delivery could not fit in one of its frames, so it is refused here before anything is sent.
    allowed = deliverable_payload(queue, max_frame, attempts=job.attempts, timeout=job.timeout,
                                  name=job.name, group=job.group)
    if payload > allowed:
        raise ValueError(f"payload{which} is {payload:,} bytes encoded; delivered, it would not "
                         f"fit in the broker's frame limit of {max_frame:,} bytes (at most "
                         f"{allowed:,} bytes for this job)")


class BulkJobs:
    """The jobs of a bulk add, encoded and checked, ready to be split into frames.

    ``raws``: the payloads, encoded. ``template``: the call's options (None without any).
    ``own``: the jobs given as ``JobSpec``, by index, with their own options.
    """

    __slots__ = ("own", "queue", "raws", "template")

    def __init__(self, queue: str, raws: list[msgspec.Raw], template: JobDef | None,
                 own: dict[int, JobDef]) -> None:
        self.queue = queue
        self.raws = raws
        self.template = template
        self.own = own

    def job(self, index: int) -> JobDef:
        """The wire form of job ``index``."""
        spec = self.own.get(index)
        if spec is not None:
            return spec
        if self.template is None:
            return JobDef(self.raws[index])
        return msgspec.structs.replace(self.template, data=self.raws[index])


def bulk_jobs(queue: str, payloads: Iterable[Any], options: JobOptions) -> BulkJobs:
    """Encode and check a bulk add's payloads and options (raising ``TypeError`` or
    ``ValueError`` naming the first bad one) before any frame is built."""
    check_queue(queue)
    items = list(payloads)
    has_specs = JobSpec in map(type, items)
    raws = encode_values(
        [item.data if isinstance(item, JobSpec) else item for item in items]
        if has_specs else items, "payload")
    # Options are checked once for the call, and once for each JobSpec, before any frame.
    template = job_def(NIL, **options) if options else None
    own: dict[int, JobDef] = {}
    if has_specs:
        own = {index: job_def(raws[index], **item.options())
               for index, item in enumerate(items) if isinstance(item, JobSpec)}
    return BulkJobs(queue, raws, template, own)


def frames(jobs: BulkJobs, max_frame: int) -> Iterator[list[JobDef]]:
    """The jobs of each frame of a bulk add, in order; the first ``next`` raises ``ValueError``
    when a job cannot fit in a frame of ``max_frame`` bytes on its own.

    A frame holds at most ``BULK_FRAME_JOBS`` jobs (``FIRST_FRAME_JOBS`` for the first) and at
    most ``BULK_FRAME_BYTES`` of them, or a single job when it is larger than that.
    """
    raws = jobs.raws
    envelope = add_envelope(jobs.queue)
    room = max_frame - envelope  # for one job: its list header is 1 byte, as in the envelope
    target = min(BULK_FRAME_BYTES, room - _LIST_HEADER_GROWTH)
    extra = (job_size(jobs.template) if jobs.template is not None else job_size(JobDef(NIL))) \
        - len(NIL)
    largest = max(map(len, raws), default=0) + extra
    sizes: list[int] | None = None
    if jobs.own or largest * BULK_FRAME_JOBS > target:
        sizes = [len(raw) + extra for raw in raws]
        for index, spec in jobs.own.items():
            sizes[index] = job_size(spec)
        largest = max(sizes, default=0)
    # Past either bound some job may not be sendable (its options - attempts, a timeout, a
    # name - go into its delivery too): the first such job is named before any frame is built.
    common = jobs.template if jobs.template is not None else JobDef(NIL)
    deliverable = deliverable_payload(jobs.queue, max_frame, attempts=common.attempts,
                                      timeout=common.timeout, name=common.name,
                                      group=common.group)
    if largest > room or max(map(len, raws), default=0) > deliverable:
        for index in range(len(raws)):
            check_fits(jobs.queue, jobs.job(index), max_frame, index=index)
    else:
        for index in sorted(jobs.own):  # the rest share the options just checked
            check_fits(jobs.queue, jobs.own[index], max_frame, index=index)
    for start, stop in chunks(len(raws), sizes, target):
        yield [jobs.job(index) for index in range(start, stop)]


def chunks(count: int, sizes: list[int] | None, target: int) -> Iterator[tuple[int, int]]:
    """Split ``count`` jobs into runs of at most ``target`` bytes (``sizes`` None: all small
    enough that ``BULK_FRAME_JOBS`` of them fit) and ``BULK_FRAME_JOBS`` jobs; yield each run's
    (start, stop) indices. A job larger than ``target`` makes a run of its own.

    The first run is short (``FIRST_FRAME_JOBS``), so workers start while the rest is built.
    """
    most = FIRST_FRAME_JOBS
    start = 0
    if sizes is None:
        while start < count:
            yield start, min(start + most, count)
            start += most
            most = BULK_FRAME_JOBS
        return
    total = 0
    for index, size in enumerate(sizes):
        if index > start and (total + size > target or index - start >= most):
            yield start, index
            start, total, most = index, 0, BULK_FRAME_JOBS
        total += size
    if start < count:
        yield start, count
