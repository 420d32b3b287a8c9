"""Request handling: what each client message does to the broker's core, and the reply.

``handle`` is one ``match`` over the messages a client may send after ``hello``. It does no I/O:
replies go to the peer's buffer (``Peer.send``), and what must wait for the log (an ``add``'s
``added``), for dispatch or for a job to finish is left in the ``Core`` for the flush.

No exception leaves ``handle``: a request the state machine refuses gets ``INVALID_STATE``, and
one that fails for any other reason (a bug) gets ``INTERNAL`` and one logged traceback, while the
connection stays open. The state machine works out what a change will do before it changes
anything, so such a request leaves the state as it was.
"""

from __future__ import annotations

import logging
import operator
from typing import Final, assert_never

import msgspec

from conveyor.protocol import (
    DELIVERY_MAX_OVERHEAD,
    MAX_OFFSET,
    Ack,
    Add,
    AddFlow,
    Authenticate,
    Children,
    Clean,
    ClientMessage,
    Count,
    Counts,
    Drain,
    ErrorCode,
    Extend,
    Fail,
    FindJob,
    Finished,
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
    JobReply,
    Jobs,
    Ok,
    Pause,
    Progress,
    Promote,
    ProtocolError,
    QueueList,
    Release,
    Remove,
    RemoveSchedule,
    RetryFailed,
    ScheduleInfo,
    Schedules,
    SetLimits,
    SetSchedule,
    SetWindow,
    Subscribe,
    Throttle,
    Unwait,
    Wait,
    Watch,
    check_queue_name,
    deliver_size,
    deliverable_payload,
)

from ._access import refusal
from ._core import Core
from ._errors import StateError
from ._flows import flow_error
from ._jobs import Job
from ._peer import Peer
from ._queues import Queues
from ._schedules import check
from ._stats import collect, fitting
from ._store import summary
from ._users import Permission, User

__all__ = ["MIN_LEASE", "handle"]

MIN_LEASE: Final = 1.0
"""Shortest lease a subscription may ask for (seconds): a shorter one would take jobs from
healthy workers whose event loop merely paused (a garbage collection, a slow callback)."""

log = logging.getLogger("broker")


def handle(core: Core, peer: Peer, message: ClientMessage, now: float) -> None:
    """Apply one message from ``peer`` at time ``now``, and reply (or leave the reply due)."""
    queues = core.queues
    user = peer.user
    if user is not None:
        forbidden = refusal(user, message, queues.jobs, queues.schedules)
        if forbidden is not None:
            peer.refuse(forbidden)
            return
    try:
        match message:
            # Workers, on the jobs they hold (no replies).
            case Ack(job=job_id, lease=lease, result=result):
                queues.ack(peer, job_id, lease, result, now)
            case Fail(job=job_id, lease=lease, error=error, retry=retry, delay=delay):
                queues.fail(peer, job_id, lease, error, now, retry=retry, delay=delay)
            case Release(job=job_id, lease=lease):
                queues.release(peer, job_id, lease, now)
            case Throttle(job=job_id, lease=lease, seconds=seconds):
                queues.throttle(peer, job_id, lease, seconds, now)
            case Progress(job=job_id, lease=lease, progress=value):
                queues.progress(peer, job_id, lease, value, now)
            case Extend(queue=name):
                queues.extend(peer, name, now)
            # Producers: ``added`` once the jobs' record is durable (the flush sends it).
            case Add(req=req, queue=name, jobs=jobs):
                if not core.accepting:
                    peer.refuse(ProtocolError(ErrorCode.SHUTTING_DOWN, "broker is shutting down",
                                              req=req))
                elif _queue_ok(peer, req, name) and _deliverable(peer, req, name, jobs,
                                                                 core.max_frame):
                    core.accepted.append((peer, req, queues.create(name, jobs, now)))
            case AddFlow(req=req, jobs=flow):
                if not core.accepting:
                    peer.refuse(ProtocolError(ErrorCode.SHUTTING_DOWN, "broker is shutting down",
                                              req=req))
                elif _flow_ok(peer, req, flow, core.max_frame):
                    core.accepted.append((peer, req, queues.create_flow(flow, now)))
            # Subscriptions.
            case Subscribe(req=req, queue=name, window=window, lease=lease):
                if not lease >= MIN_LEASE:
                    peer.refuse(ProtocolError(
                        ErrorCode.INVALID_FIELD,
                        f"a lease of {lease:g} s is below the minimum of {MIN_LEASE:g} s "
                        f"- at `$.lease`", req=req))
                elif _queue_ok(peer, req, name):
                    queues.subscribe(peer, name, window, lease)
                    peer.send(Ok(req=req))
            case SetWindow(req=req, queue=name, window=window):
                consumer = queues.consumer(peer, name)
                if consumer is None:
                    peer.refuse(ProtocolError(
                        ErrorCode.INVALID_QUEUE, f"not subscribed to queue {name!r}", req=req))
                else:
                    queues.subscribe(peer, name, window, consumer.lease)
                    peer.send(Ok(req=req))
            # Waiting and watching.
            case Wait(req=req, job=job_id):
                job = queues.jobs.get(job_id)
                if job is None:
                    peer.refuse(ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id}", req=req))
                elif job.finished_at is not None:
                    peer.send(Finished(req=req, job=job.info()))
                elif not core.waiters.add(peer, req, job_id):
                    peer.refuse(ProtocolError(
                        ErrorCode.LIMIT_EXCEEDED,
                        f"this connection has {core.waiters.limit} waits pending, the most the "
                        f"broker allows", req=req))
            case Unwait(job=job_id, wait=wait_req):
                core.waiters.withdraw(peer, job_id, wait_req)
            case Watch(req=req, queue=name, watching=watching):
                if _queue_ok(peer, req, name):
                    core.watchers.watch(peer, name, watching)
                    peer.send(Ok(req=req))
            # Reading.
            case GetJob(req=req, job=job_id):
                job = queues.jobs.get(job_id)
                peer.send(JobReply(req=req, job=None if job is None else job.info()))
            case FindJob(req=req, key=key):
                found = queues.keyed(key, now)
                if (found is not None and user is not None
                        and not user.may(Permission.READ, found.queue)):
                    found = None  # as if there were none: the key tells nothing of other queues
                peer.send(JobReply(req=req, job=None if found is None else found.info()))
            case GetStats(req=req, queue=name, after=after):
                if name is None or _queue_ok(peer, req, name):
                    peer.send(collect(queues, core.observed, user, name, now, req, after=after,
                                      max_frame=core.max_frame))
            case GetQueues(req=req, after=after):
                peer.send(_queues_page(queues, user, req, after, now, core.max_frame))
            case GetCounts(req=req, queue=name):
                if _queue_ok(peer, req, name):
                    peer.send(Counts(req=req, **queues.counts(name)))
            case GetJobs(req=req, queue=name, state=state, offset=offset, limit=limit):
                if _queue_ok(peer, req, name):
                    # A page past the last int64 position is empty (and slicing must not go there).
                    limit = min(limit, MAX_OFFSET - offset)
                    page, total = queues.list_jobs(name, state, offset, limit)
                    peer.send(_page(req, page, total, core.max_frame))
            # Steering queues.
            case GetChildren(req=req, job=job_id, offset=offset):
                job = queues.jobs.get(job_id)
                if job is None:
                    peer.refuse(ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id}", req=req))
                else:
                    room = core.max_frame - len(_encoder.encode(
                        Children(req=req, children=[], more=True)))
                    children, more = queues.flows.page(job, offset, room)
                    peer.send(Children(req=req, children=children, more=more))
            case Promote(req=req, job=job_id):
                _job_ok(peer, req, job_id, queues.promote(job_id, now))
            case Remove(req=req, job=job_id):
                _job_ok(peer, req, job_id, queues.remove(job_id, now))
            case Pause(req=req, queue=name, paused=paused):
                if _queue_ok(peer, req, name):
                    queues.pause(name, paused)
                    peer.send(Ok(req=req))
            case RetryFailed(req=req, queue=name, job=job_id):
                if name is None or _queue_ok(peer, req, name):
                    _retry_failed(queues, peer, req, name, job_id, now)
            case Drain(req=req, queue=name):
                if _queue_ok(peer, req, name):
                    peer.send(Count(req=req, count=queues.drain(name, now)))
            case Clean(req=req, queue=name, state=state, older_than=older_than):
                if _queue_ok(peer, req, name):
                    peer.send(Count(req=req, count=queues.clean(name, state, older_than, now)))
            case SetLimits(req=req, queue=name, limits=limits):
                if _queue_ok(peer, req, name):
                    queues.set_limits(name, limits)
                    peer.send(Ok(req=req))
            case SetSchedule(req=req, schedule=schedule):
                if _queue_ok(peer, req, schedule.queue):
                    problem = check(schedule)
                    if problem is not None:
                        peer.refuse(ProtocolError(ErrorCode.INVALID_ARGUMENT, problem, req=req))
                    else:
                        queues.set_schedule(schedule, now)
                        peer.send(Ok(req=req))
            case RemoveSchedule(req=req, id=schedule_id):
                if queues.remove_schedule(schedule_id):
                    peer.send(Ok(req=req))
                else:
                    peer.refuse(ProtocolError(ErrorCode.UNKNOWN_JOB,
                                              f"no schedule {schedule_id!r}", req=req))
            case GetSchedules(req=req, after=after):
                peer.send(_schedules_page(queues, user, req, after, core.max_frame))
            case Hello() | Authenticate():
                peer.refuse(ProtocolError(ErrorCode.INVALID_FIELD, "already greeted"))
            case _:
                assert_never(message)
    except StateError as exc:
        peer.refuse(ProtocolError(ErrorCode.INVALID_STATE, str(exc),
                                  req=getattr(message, "req", 0)))
    except Exception as exc:
        tag = message.__struct_config__.tag
        log.exception("internal error handling a %r request from %r", tag, peer)
        peer.refuse(ProtocolError(
            ErrorCode.INTERNAL,
            f"internal error handling {tag!r} ({type(exc).__name__}); the request had no effect",
            req=getattr(message, "req", 0)))


def _queue_ok(peer: Peer, req: int, name: str) -> bool:
    """Whether ``name`` is a valid queue name; if not, ``peer`` is told so."""
    problem = check_queue_name(name)
    if problem is not None:
        peer.refuse(ProtocolError(ErrorCode.INVALID_QUEUE, problem, req=req))
    return problem is None


_data = operator.attrgetter("data")
_encoder: Final = msgspec.msgpack.Encoder()


def _page(req: int, jobs: list[Job], total: int, max_frame: int) -> Jobs:
    """The ``jobs`` reply: as many of ``jobs`` as fit in a frame of ``max_frame`` bytes (at
    least one, however large), so that a page of 10,000 large jobs is not 10,000 large jobs."""
    room = max_frame - (len(_encoder.encode(Jobs(req=req, jobs=[], total=total))) - 1)
    return Jobs(req=req, jobs=fitting(map(Job.info, jobs), room), total=total)


def _deliverable(peer: Peer, req: int, queue: str, jobs: list[JobDef], max_frame: int) -> bool:
    """Whether every job's delivery fits in one ``deliver`` frame of ``max_frame`` bytes (with
    the largest job id, lease and attempt it may get); if not, ``peer`` is told which does not.

    A ``deliver`` carries more around a payload than an ``add`` does, so a payload that just fit
    in an ``add`` could make the broker send a frame over its own limit.
    """
    room = max_frame - deliver_size(queue, 1, DELIVERY_MAX_OVERHEAD)
    if not jobs or max(map(len, map(_data, jobs))) <= room:
        return True  # every job fits, whatever its options
    for index, job in enumerate(jobs):
        if _undeliverable(peer, req, queue, job, max_frame, f"$.jobs[{index}].data"):
            return False
    return True


def _undeliverable(peer: Peer, req: int, queue: str, job: JobDef, max_frame: int,
                   where: str) -> bool:
    """Whether ``job``'s delivery cannot fit in a frame of ``max_frame`` bytes whatever its
    id, lease and attempt; if so, ``peer`` is told, naming the payload at ``where``."""
    most = deliverable_payload(queue, max_frame, attempts=job.attempts, timeout=job.timeout,
                               name=job.name, group=job.group)
    if len(job.data) <= most:
        return False
    peer.refuse(ProtocolError(
        ErrorCode.INVALID_ARGUMENT,
        f"`{where}`: a payload of {len(job.data)} bytes cannot be delivered within the frame "
        f"limit of {max_frame} bytes (this job's payload may take {most} bytes at most)",
        req=req))
    return True


def _queues_page(queues: Queues, user: User | None, req: int, after: str, now: float,
                 max_frame: int) -> QueueList:
    """The ``queues`` reply: the queues ``user`` has some right on with names after ``after``,
    by name, as many as fit in a frame of ``max_frame`` bytes."""
    names = sorted(name for name in queues.queues
                   if name > after and (user is None or user.may_any(name)))
    room = max_frame - len(_encoder.encode(QueueList(req=req, queues=[], more=True)))
    at = queues.timeline.monotonic(now)
    page = fitting((summary(queues.queues[name], at) for name in names), room)
    return QueueList(req=req, queues=page, more=len(page) < len(names))


def _schedules_page(queues: Queues, user: User | None, req: int, after: str,
                    max_frame: int) -> Schedules:
    """The ``schedules`` reply: the schedules ``user`` may read with ids after ``after``, by id,
    as many as fit in a frame of ``max_frame`` bytes."""
    states = queues.schedules
    ids = sorted(key for key, state in states.items() if key > after and (
        user is None or user.may(Permission.READ, state.schedule.queue)))
    room = max_frame - len(_encoder.encode(Schedules(req=req, schedules=[], more=True)))
    page = fitting((ScheduleInfo(schedule=states[key].schedule, next_run=states[key].next)
                    for key in ids), room)
    return Schedules(req=req, schedules=page, more=len(page) < len(ids))


def _flow_ok(peer: Peer, req: int, flow: list[FlowJob], max_frame: int) -> bool:
    """Whether ``flow`` is a flow whose queue names are valid and whose every job can be
    delivered (as ``_deliverable``); if not, ``peer`` is told why."""
    problem = flow_error(flow)
    if problem is not None:
        peer.refuse(ProtocolError(ErrorCode.INVALID_FIELD, problem, req=req))
        return False
    rooms: dict[str, int] = {}
    """The payload that fits any delivery of each queue of the flow (its name checked)."""
    for index, entry in enumerate(flow):
        room = rooms.get(entry.queue)
        if room is None:
            problem = check_queue_name(entry.queue)
            if problem is not None:
                peer.refuse(ProtocolError(ErrorCode.INVALID_QUEUE, f"{problem} - at "
                                          f"`$.jobs[{index}].queue`", req=req))
                return False
            room = rooms[entry.queue] = max_frame - deliver_size(entry.queue, 1,
                                                                 DELIVERY_MAX_OVERHEAD)
        if len(entry.job.data) > room and _undeliverable(
                peer, req, entry.queue, entry.job, max_frame, f"$.jobs[{index}].job.data"):
            return False
    return True


def _retry_failed(queues: Queues, peer: Peer, req: int, name: str | None,
                  job_id: int | None, now: float) -> None:
    if (name is None) == (job_id is None):
        peer.refuse(ProtocolError(ErrorCode.INVALID_FIELD,
                                  "retry_failed takes either a queue or a job", req=req))
    elif job_id is not None and job_id not in queues.jobs:
        peer.refuse(ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id}", req=req))
    else:
        peer.send(Count(req=req, count=queues.retry_failed(name, job_id, now)))


def _job_ok(peer: Peer, req: int, job_id: int, job: Job | None) -> None:
    """``ok``, or ``unknown job`` when there was no such job."""
    if job is None:
        peer.refuse(ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {job_id}", req=req))
    else:
        peer.send(Ok(req=req))
