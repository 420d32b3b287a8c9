"""Replay of flows: a restart (from the log, or from a snapshot) rebuilds every parent waiting
for its children with the outcomes it took note of, whatever the children did (completed,
failed under each policy, removed), and a parent released by its last child comes back in line;
a flow is one record, and a full disk refuses all of it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from log_support import LoggedCore, assert_same_state, reopen
from queue_state import raw

from conveyor.broker import DiskFull
from conveyor.broker.testing import (
    Queues,
    Record,
    Replayer,
    flush,
    handle,
)
from conveyor.broker.testing import snapshot as snapshot_of
from conveyor.protocol import (
    AddFlow,
    Children,
    Error,
    ErrorCode,
    FlowJob,
    GetChildren,
    JobDef,
    JobError,
    JobState,
)


def node(queue: str, data: str, parent: int | None = None, policy: str = "fail",
         **options: object) -> FlowJob:
    return FlowJob(queue=queue, job=JobDef(data=raw(data), **options),  # type: ignore[arg-type]
                   parent=parent, on_failure=policy)  # type: ignore[arg-type]


def replayed_from_snapshot(queues: Queues, *, keep_failed: int = 10_000) -> Queues:
    again = Queues(logged=True, keep_failed=keep_failed)
    replayer = Replayer(again)
    for record in snapshot_of(queues):
        replayer.apply(record)
    replayer.finish()
    return again


def test_parents_and_their_childrens_outcomes_come_back(tmp_path: Path) -> None:
    broker = LoggedCore(tmp_path)
    # 0: root on "p", 1: a child parent on "m" with 2 and 3 on "c", 4 on "c" (ignored).
    ids = broker.add_flow(node("p", "root"), node("m", "mid", 0), node("c", "a", 1),
                          node("c", "b", 1), node("c", "d", 0, "ignore"))
    # A second flow whose one child is removed (its parent is removed with it), and a third
    # whose failing child fails it.
    removing = broker.add_flow(node("p", "removed"), node("x", "gone", 0, "remove"))
    failing = broker.add_flow(node("p", "failed"), node("y", "bad", 0), node("y", "good", 0))
    assert broker.run("c") == ids[2]
    assert broker.run("c") == ids[3]  # mid's last child: mid is waiting now
    assert broker.run("c", fail=True) == ids[4]  # ignored by the root
    assert broker.queues.remove(removing[1], broker.now) is not None
    flush(broker.core, broker.now)
    assert broker.run("y", fail=True) == failing[1]
    jobs = broker.queues.jobs
    assert jobs[ids[1]].state is JobState.WAITING
    assert jobs[ids[0]].state is JobState.WAITING_CHILDREN
    flow = jobs[ids[0]].flow
    assert flow is not None and flow.left == 1
    assert removing[0] not in jobs
    assert jobs[failing[0]].state is JobState.FAILED
    broker.close()
    replayed, _ = reopen(tmp_path)
    assert_same_state(broker.queues, replayed)
    assert_same_state(broker.queues, replayed_from_snapshot(broker.queues))


def test_the_last_child_releases_its_parent_in_line_or_until_its_time(tmp_path: Path) -> None:
    broker = LoggedCore(tmp_path)
    later = broker.add_flow(node("p", "later", run_at=broker.now + 3600.0), node("c", "a", 0))
    now = broker.add_flow(node("p", "now", delay=1.0), node("c", "b", 0))
    broker.now += 10.0  # "now"'s delay is over before its child finishes
    broker.run("c")
    broker.run("c")
    jobs = broker.queues.jobs
    assert jobs[later[0]].state is JobState.DELAYED
    assert jobs[now[0]].state is JobState.WAITING
    assert [job.id for job in broker.queues.queue("p").waiting] == [now[0]]
    broker.close()
    replayed, _ = reopen(tmp_path)
    assert_same_state(broker.queues, replayed)
    assert replayed.jobs[later[0]].state is JobState.DELAYED
    # The parent runs and reads its child's result after the restart too.
    parent = replayed.jobs[now[0]]
    assert parent.flow is not None
    assert [bytes(child.result) for child in parent.flow.done.values()] == [
        bytes(raw(f"r{now[1]}"))]


def test_a_flow_is_one_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = LoggedCore(tmp_path)
    written: list[Record] = []
    append = broker.log.append

    def recording(records: list[Record]) -> None:
        written.extend(records)
        append(records)

    monkeypatch.setattr(broker.log, "append", recording)
    ids = broker.add_flow(node("p", "root"),
                          *(node(f"c{i % 3}", str(i), 0) for i in range(30)))
    assert [type(record).__name__ for record in written] == ["FlowAdded"]
    assert ids == list(range(ids[0], ids[0] + 31))
    broker.close()


def test_a_full_disk_refuses_the_whole_flow(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    broker = LoggedCore(tmp_path)
    append = broker.log.append

    def full(records: list[Record]) -> None:
        monkeypatch.setattr(broker.log, "append", append)  # once
        raise DiskFull("no room")

    monkeypatch.setattr(broker.log, "append", full)
    monkeypatch.setattr(broker.log, "make_room", lambda: 0)
    broker.req += 1
    handle(broker.core, broker.producer, AddFlow(req=broker.req, jobs=[
        node("p", "root"), node("c", "a", 0), node("d", "b", 1)]), broker.now)
    flush(broker.core, broker.now)
    (reply,) = broker.producer.take()
    assert isinstance(reply, Error) and reply.code == ErrorCode.DISK_FULL
    assert broker.queues.jobs == {}
    assert [broker.queues.counts(name)["waiting"] + broker.queues.counts(name)[
        "waiting_children"] for name in ("p", "c", "d")] == [0, 0, 0]
    # The next flow is taken whole.
    ids = broker.add_flow(node("p", "root"), node("c", "a", 0))
    assert broker.queues.jobs[ids[0]].state is JobState.WAITING_CHILDREN
    broker.close()
    replayed, _ = reopen(tmp_path)
    assert_same_state(broker.queues, replayed)


def test_a_parent_failed_by_its_child_is_retained_after_it_as_replay_has_it(
        tmp_path: Path) -> None:
    # The child's own retention comes first, then the parent's failure: with room for one
    # failed job, the parent is the one kept, live and after a restart.
    broker = LoggedCore(tmp_path, keep_failed=1)
    parent, child = broker.add_flow(node("q", "parent"), node("q", "child", 0))
    assert broker.run("q", fail=True) == child
    jobs = broker.queues.jobs
    assert child not in jobs and jobs[parent].state is JobState.FAILED
    broker.close()
    replayed, _ = reopen(tmp_path, keep_failed=1)
    assert_same_state(broker.queues, replayed)


def test_a_snapshot_keeps_a_child_failed_before_its_parent_in_that_order(
        tmp_path: Path) -> None:
    # Both finish at one time, the parent (the lower id) second; a job with a retention of its
    # own in the same queue must not reorder them.
    broker = LoggedCore(tmp_path)
    own = broker.add_flow(node("q", "own", keep_result=3600.0))
    parent, child = broker.add_flow(node("q", "parent"), node("q", "child", 0))
    assert broker.run("q", fail=True) == own[0]
    assert broker.run("q", fail=True) == child
    assert list(broker.queues.queue("q").kept_failed) == [child, parent]
    again = replayed_from_snapshot(broker.queues)
    assert list(again.queue("q").kept_failed) == [child, parent]
    assert_same_state(broker.queues, again)
    broker.close()


@pytest.mark.parametrize("message", ["", "\N{GRINNING FACE}" * 300])
def test_a_page_of_children_that_failed_fits_in_a_frame(tmp_path: Path, message: str) -> None:
    # Errors with short strings (their map costs more than their text), or with characters
    # that take 4 bytes in UTF-8: every page still fits the frame limit, and none is lost.
    broker = LoggedCore(tmp_path)
    ids = broker.add_flow(node("p", "root"), *(node("c", str(i), 0, "ignore")
                                               for i in range(300)))
    broker.queues.subscribe(broker.worker, "c", 300)
    ((_, jobs),) = broker.queues.dispatch(broker.now)
    for job in jobs:
        broker.queues.fail(broker.worker, job.id, job.lease, JobError("E", message),
                           broker.now, retry=False)
    flush(broker.core, broker.now)
    broker.core.max_frame = 8192
    encoder = msgspec.msgpack.Encoder()
    read: list[int] = []
    while True:
        handle(broker.core, broker.producer,
               GetChildren(req=1, job=ids[0], offset=len(read)), broker.now)
        flush(broker.core, broker.now)
        (reply,) = broker.producer.take()
        assert isinstance(reply, Children)
        assert len(encoder.encode(reply)) <= broker.core.max_frame
        read += [child.id for child in reply.children]
        if not reply.more:
            break
    assert read == ids[1:]
    broker.close()


def test_a_snapshot_of_a_parent_with_many_results_is_no_one_huge_record(tmp_path: Path) -> None:
    # A base file's record holds at most one child's outcome: the results of a flow's children
    # add up past any record limit (a record is at most 1 GiB) however many children there are.
    broker = LoggedCore(tmp_path)
    ids = broker.add_flow(node("p", "root"), *(node("c", str(i), 0) for i in range(200)))
    broker.queues.subscribe(broker.worker, "c", 200)
    ((_, jobs),) = broker.queues.dispatch(broker.now)
    for job in jobs[:150]:
        result = raw("x" * 8192)
        broker.queues.ack(broker.worker, job.id, job.lease, result, broker.now)
    flush(broker.core, broker.now)
    parent = broker.queues.jobs[ids[0]]
    assert parent.flow is not None and parent.flow.left == 50
    encoder = msgspec.msgpack.Encoder()
    assert max(len(encoder.encode(record)) for record in snapshot_of(broker.queues)) < 16_384
    again = replayed_from_snapshot(broker.queues)
    assert_same_state(broker.queues, again)
    assert list(again.jobs[ids[0]].flow.done) == ids[1:151]  # type: ignore[union-attr]
    broker.close()


def _torn_at_child_done(broker: LoggedCore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next pass's write loses its records from the first ``ChildDone`` on, as a tail torn
    there by a power loss would."""
    append = broker.log.append

    def torn(records: list[Record]) -> None:
        names = [type(record).__name__ for record in records]
        if "ChildDone" in names:
            monkeypatch.setattr(broker.log, "append", append)  # once
            records = records[:names.index("ChildDone")]
        append(records)

    monkeypatch.setattr(broker.log, "append", torn)


@pytest.mark.parametrize("fail", [False, True])
def test_a_tail_torn_between_a_child_and_its_parents_note_is_made_good_on_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    # The child's own record survived, its parent's note did not: on start the parent takes
    # note (and reacts) as it did live, instead of waiting for a child that is done for good.
    broker = LoggedCore(tmp_path)
    root, mid, leaf = broker.add_flow(node("p", "root"), node("m", "mid", 0), node("c", "a", 1))
    _torn_at_child_done(broker, monkeypatch)
    assert broker.run("c", fail=fail) == leaf
    live = broker.queues.jobs
    assert live[mid].state is (JobState.FAILED if fail else JobState.WAITING)
    assert live[root].state is (JobState.FAILED if fail else JobState.WAITING_CHILDREN)
    broker.close()
    again = LoggedCore(tmp_path)  # a broker started on that log; its first pass writes the notes
    assert_same_state(broker.queues, again.queues)
    flush(again.core, again.now)
    again.close()
    replayed, _ = reopen(tmp_path)
    assert_same_state(broker.queues, replayed)


def test_a_tail_torn_before_a_parent_failed_by_its_child_is_made_good_on_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = LoggedCore(tmp_path)
    root, mid, leaf = broker.add_flow(node("p", "root"), node("m", "mid", 0),
                                      node("c", "a", 1, "remove"))
    append = broker.log.append

    def torn(records: list[Record]) -> None:
        names = [type(record).__name__ for record in records]
        if "JobsRemoved" in names:
            monkeypatch.setattr(broker.log, "append", append)  # once
            records = records[:names.index("JobsRemoved")]
        append(records)

    monkeypatch.setattr(broker.log, "append", torn)
    assert broker.run("c", fail=True) == leaf
    assert mid not in broker.queues.jobs
    assert broker.queues.jobs[root].state is JobState.FAILED
    broker.close()
    again = LoggedCore(tmp_path)
    assert_same_state(broker.queues, again.queues)
    flush(again.core, again.now)
    again.close()
    replayed, _ = reopen(tmp_path)
    assert_same_state(broker.queues, replayed)
