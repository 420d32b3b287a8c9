"""A damaged log: torn tails are cut off with a warning, damage before the tail stops the start
unless the operator salvages, and a data directory serves one broker at a time."""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from log_support import assert_one_error_line, reopen, run_broker, start_broker
from queue_state import raw

from conveyor.broker import Broker, FsyncPolicy, LogDamaged, LogError
from conveyor.broker.testing import (
    FILE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    Core,
    Log,
    Queues,
    RecordingPeer,
    RecordReader,
    Recovery,
    append_record,
    flush,
    handle,
)
from conveyor.client import Client
from conveyor.protocol import Add, Added, JobDef, JobState

INCREMENT = "incr-00000001.log"
"""The one file a fresh log appends to (no compaction runs in these tests)."""

State = dict[int, tuple[JobState, bytes]]


def state_of(queues: Queues) -> State:
    """Each job's state (as a restart leaves it) and result."""
    return {job.id: (JobState.WAITING if job.state is JobState.ACTIVE else job.state,
                     bytes(job.result))
            for job in queues.jobs.values()}


class History:
    """A log of many small records, one flush (so one append) each, as a broker writes it;
    remembers where each record ends and the state after it."""

    def __init__(self, directory: Path, adds: int = 90) -> None:
        self.directory = directory
        self.ends: list[int] = []
        """File offset just past each record."""
        self.states: list[State] = []
        """The state once each record is applied."""
        self.record_of: dict[int, int] = {}
        """For each job, the index of the record that added it."""
        queues = Queues(logged=True)
        log = Log(directory, fsync=FsyncPolicy.NO)
        log.open(queues)
        core = Core(queues, log)
        producer, worker = RecordingPeer("producer"), RecordingPeer("worker")
        queues.subscribe(worker, "q", 1)
        for n in range(adds):
            now = 1000.0 + n
            handle(core, producer, Add(req=n + 1, queue="q", jobs=[JobDef(data=raw(f"job {n}"))]),
                   now)
            self.record_of[queues.last_id] = len(self.ends)
            self._flush(core, now)
            if n % 3 == 2:
                # The worker finishes the job it holds (it got one in the flush that added it).
                [job] = queues.list_jobs("q", JobState.ACTIVE, 0, 1)[0]
                queues.ack(worker, job.id, job.lease, raw(f"done {job.id}"), 2000.0 + n)
                self._flush(core, 2000.0 + n)
        asyncio.run(log.close())
        self.final = state_of(queues)
        assert len(self.final) == adds
        assert sum(s is JobState.COMPLETED for s, _ in self.final.values()) == adds // 3

    def _flush(self, core: Core, now: float) -> None:
        assert len(core.queues.output.records) == 1
        assert core.log is not None
        flush(core, now)
        self.ends.append(FILE_HEADER_SIZE + core.log.written)
        self.states.append(state_of(core.queues))

    @property
    def increment(self) -> Path:
        return self.directory / INCREMENT

    def copy(self, to: Path) -> Path:
        shutil.rmtree(to, ignore_errors=True)
        shutil.copytree(self.directory, to)
        return to


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return History(tmp_path_factory.mktemp("history") / "data")


def add_after_restart(directory: Path, *, salvage: bool = False) -> tuple[State, Recovery, int]:
    """Start on ``directory`` as a broker would, add one job, stop.

    Returns the state the start recovered, what recovery reported, and the new job's id.
    """
    queues = Queues(logged=True)
    log = Log(directory, fsync=FsyncPolicy.NO, salvage=salvage)
    recovery = log.open(queues)
    recovered = state_of(queues)
    producer = RecordingPeer("producer")
    core = Core(queues, log)
    handle(core, producer, Add(req=1, queue="q", jobs=[JobDef(data=raw("after restart"))]),
           5000.0)
    flush(core, 5000.0)
    asyncio.run(log.close())
    [added] = producer.sent
    assert isinstance(added, Added)
    return recovered, recovery, added.ids[0]


def test_a_cut_anywhere_in_the_last_records_recovers_exactly_the_records_before_it(
    history: History, tmp_path: Path,
) -> None:
    """A crash mid-write leaves any prefix of the last records: the start recovers every record
    that is wholly there, warns with the bytes it cut off, and later appends are kept."""
    ends = history.ends
    for cut in range(ends[-5], ends[-1] + 1):
        whole = max(i for i, end in enumerate(ends) if end <= cut)
        directory = history.copy(tmp_path / "data")
        os.truncate(directory / INCREMENT, cut)

        queues, recovery = reopen(directory)

        assert state_of(queues) == history.states[whole], cut
        dropped = cut - ends[whole]
        if dropped:
            assert len(recovery.warnings) == 1, recovery.warnings
            assert f"tail of {dropped} bytes" in recovery.warnings[0], recovery.warnings
        else:
            assert recovery.warnings == []
        # The tail is gone from the file: the next start is clean and keeps what is added.
        assert (directory / INCREMENT).stat().st_size == ends[whole]
        _, _, new_id = add_after_restart(directory)
        assert new_id == max(history.states[whole]) + 1
        again, recovery = reopen(directory)
        assert recovery.warnings == []
        assert state_of(again) == {**history.states[whole],
                                   new_id: (JobState.WAITING, bytes(raw(None)))}


@pytest.mark.parametrize("size", range(FILE_HEADER_SIZE))
def test_a_crash_while_the_first_header_was_written_starts_empty(
    tmp_path: Path, size: int,
) -> None:
    directory = tmp_path / "data"
    asyncio.run(_create_empty_log(directory))
    os.truncate(directory / INCREMENT, size)
    queues, recovery = reopen(directory)
    assert queues.jobs == {} and len(recovery.warnings) == 1
    assert add_after_restart(directory)[2] == 1
    queues, recovery = reopen(directory)
    assert list(queues.jobs) == [1] and recovery.warnings == []


async def _create_empty_log(directory: Path) -> None:
    log = Log(directory)
    log.open(Queues(logged=True))
    await log.close()


@pytest.mark.parametrize("tail", ["zeros", "garbage"])
def test_a_zero_filled_or_garbage_tail_is_cut_off_and_every_record_recovered(
    history: History, tmp_path: Path, tail: str,
) -> None:
    """Preallocated blocks or garbage after the last record (a crash of the file system, not of
    the broker) cost nothing but a warning."""
    junk = bytes(8192) if tail == "zeros" else random.Random(7).randbytes(3001)
    directory = history.copy(tmp_path / "data")
    with open(directory / INCREMENT, "ab") as file:
        file.write(junk)

    queues, recovery = reopen(directory)

    assert state_of(queues) == history.final
    assert len(recovery.warnings) == 1
    assert f"tail of {len(junk)} bytes" in recovery.warnings[0]
    assert reopen(directory)[1].warnings == []


def flip_bit(path: Path, offset: int, bit: int = 3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


FIELDS = {"length": 1, "body_crc": 5, "head_crc": 10, "body": RECORD_HEADER_SIZE + 3}
"""Where in a record to flip a bit: a byte of each header field, and one of the body."""
DAMAGED_JOB = 45
"""A job in the middle of the history that is still waiting at its end."""


def damage(history: History, directory: Path, field: str) -> int:
    """Flip a bit in the record that added ``DAMAGED_JOB``; return that record's size."""
    index = history.record_of[DAMAGED_JOB]
    start, end = history.ends[index - 1], history.ends[index]
    assert start > history.ends[-1] // 3 and end < history.ends[-1] * 2 // 3
    flip_bit(directory / INCREMENT, start + FIELDS[field])
    return end - start


@pytest.mark.parametrize("field", FIELDS)
def test_a_flipped_bit_before_the_tail_stops_the_start_unless_salvaged(
    history: History, tmp_path: Path, field: str,
) -> None:
    """Damage with valid records after it is not a torn write: starting over it would silently
    lose a job. Salvage keeps every other record, says what it skipped, and leaves a clean log."""
    directory = history.copy(tmp_path / "data")
    size = damage(history, directory, field)
    pristine = (directory / INCREMENT).read_bytes()

    with pytest.raises(LogDamaged, match="damaged at byte .*--salvage"):
        reopen(directory)
    assert (directory / INCREMENT).read_bytes() == pristine  # a refused start changes nothing

    recovered, recovery, new_id = add_after_restart(directory, salvage=True)
    expected = {job_id: s for job_id, s in history.final.items() if job_id != DAMAGED_JOB}
    assert recovered == expected
    assert new_id == max(history.final) + 1  # ids stay unique: the lost job's is not reused
    assert any(f"skipped {size} bytes" in warning for warning in recovery.warnings), \
        recovery.warnings
    assert [p.name for p in directory.glob("*.damaged")] == ["incr-00000001.damaged"]

    # The salvaged log is clean: it opens without salvage, with the job added after salvage.
    queues, recovery = reopen(directory)
    assert recovery.warnings == []
    assert state_of(queues) == {**expected, new_id: (JobState.WAITING, bytes(raw(None)))}


@pytest.mark.timeout(60)
def test_salvage_skips_a_long_damaged_stretch_of_zero_runs_in_linear_time(
    history: History, tmp_path: Path,
) -> None:
    """16 MB of damage before valid records, a zero run every 64 bytes (blocks partly written,
    say): salvage finds the records after it in seconds. Searching past each zero run by copying
    the rest of the file made this quadratic: minutes, past the timeout."""
    directory = history.copy(tmp_path / "data")
    index = history.record_of[DAMAGED_JOB]
    middle = history.ends[index]
    junk = (b"\x01" + bytes(63)) * (16 * 1024 * 1024 // 64)
    data = (directory / INCREMENT).read_bytes()
    (directory / INCREMENT).write_bytes(data[:middle] + junk + data[middle:])

    recovered, recovery, _ = add_after_restart(directory, salvage=True)

    assert recovered == history.final
    assert any(f"skipped {len(junk)} bytes" in warning for warning in recovery.warnings), \
        recovery.warnings


async def test_the_broker_cli_refuses_a_damaged_log_in_one_line_and_salvages_on_request(
    history: History, tmp_path: Path,
) -> None:
    directory = history.copy(tmp_path / "data")
    damage(history, directory, "body")

    refused = await asyncio.to_thread(run_broker, directory)
    assert refused.returncode == 1
    assert_one_error_line(refused.stderr, str(directory / INCREMENT), "damaged", "--salvage")
    assert refused.stdout == ""

    salvaging = await asyncio.to_thread(start_broker, directory, "--salvage",
                                        stderr_path=tmp_path / "salvage.stderr")
    try:
        assert "skipped" in salvaging.stderr
        async with Client(salvaging.url) as client:
            counts = await client.counts("q")
            assert (counts["waiting"], counts["completed"]) == (59, 30)
            assert await client.get_job(DAMAGED_JOB) is None
            kept = await client.get_job(DAMAGED_JOB + 1)
            assert kept is not None and kept.data == f"job {DAMAGED_JOB}"
            new_id = await client.add("q", "after salvage")
        assert await asyncio.to_thread(salvaging.stop) == 0
    finally:
        salvaging.kill()

    plain = await asyncio.to_thread(start_broker, directory, stderr_path=tmp_path / "b.stderr")
    try:
        async with Client(plain.url) as client:
            assert (await client.counts("q"))["waiting"] == 60
            job = await client.get_job(new_id)
            assert job is not None and job.data == "after salvage"
    finally:
        assert await asyncio.to_thread(plain.stop) == 0


async def test_a_second_broker_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    first = Broker(port=0, data_dir=directory)
    await first.start()
    try:
        async with Client(f"127.0.0.1:{first.port}") as client:
            await client.add("q", "kept")

        second = Broker(port=0, data_dir=directory)
        with pytest.raises(LogError, match="in use"):
            await second.start()

        refused = await asyncio.to_thread(run_broker, directory)
        assert refused.returncode == 1
        assert_one_error_line(refused.stderr, str(directory), "in use")
    finally:
        await first.close()

    # Once the first one has stopped, the directory is free again.
    third = Broker(port=0, data_dir=directory)
    await third.start()
    try:
        async with Client(f"127.0.0.1:{third.port}") as client:
            assert (await client.counts("q"))["waiting"] == 1
    finally:
        await third.close()


# Reading a file a chunk at a time.


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), max_size=30), chunk=st.integers(1, 400),
       cut=st.none() | st.integers(0, 10_000), garbage=st.none() | st.integers(0, 10_000))
def test_reading_a_file_in_chunks_finds_every_record_and_where_damage_starts(
    sizes: list[int], chunk: int, cut: int | None, garbage: int | None,
) -> None:
    """Whatever the chunk size: every valid record, in order, then the damage (a torn tail, or
    garbage with or without valid records after it) at the first byte that is not a record."""
    bodies = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    data = bytearray(b"H" * FILE_HEADER_SIZE)
    spans = []
    for body in bodies:
        start = len(data)
        append_record(data, body)
        spans.append((start, len(data)))
    hit = None
    if garbage is not None and spans:
        # A bad byte in one record's header: that record is damage; the next ones are valid.
        hit = spans[garbage % len(spans)][0]
        data[hit + 1] ^= 0xFF
    if cut is not None:
        del data[FILE_HEADER_SIZE + cut % (len(data) - FILE_HEADER_SIZE + 1):]
    reader = RecordReader(io.BytesIO(bytes(data)), len(data), chunk=chunk)
    read = [bytes(body) for body in reader]
    # Records wholly cut off are not there at all; one cut short, or hit, is damage.
    present = [(start, end) for start, end in spans if start < len(data)]
    bad = [n for n, (start, end) in enumerate(present) if end > len(data) or start == hit]
    assert read == bodies[: bad[0] if bad else len(present)]
    if not bad:
        assert reader.damage is None
        return
    damage = reader.damage
    assert damage is not None and damage.offset == present[bad[0]][0]
    following = [start for n, (start, _) in enumerate(present) if n > bad[0] and n not in bad]
    assert damage.resumes_at == (following[0] if following else None)
