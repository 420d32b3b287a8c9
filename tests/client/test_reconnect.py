"""Clients reconnect after a broker restart: calls in flight fail with ``ConnectionLost``, the next
calls go through on one new connection; ``reconnect=False`` opts out.

The broker is a child process with a data directory, killed and restarted on the same port.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from processes import launch_broker, subprocess_env

from conveyor.client import Client, Connection, ConnectionLost, SyncClient

HERE = Path(__file__).resolve().parent


class RestartableBroker:
    """``python -m conveyor.broker`` on one data directory and, once started, one port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *args: str) -> None:
        """Start the broker (on the port of the first start) and wait until it listens."""
        process, line = launch_broker(
            [sys.executable, "-m", "conveyor.broker", "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(self.directory / "data"),
             "--log-level", "warning", *args],
            stderr_path=self.directory / "broker.stderr", env=subprocess_env(HERE), append=True)
        self.port = int(line.rpartition(":")[2])
        self.process = process

    def kill(self) -> None:
        """SIGKILL the broker and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None

    async def restart(self, *args: str) -> None:
        """Start the broker again on the same port and data directory (off the event loop)."""
        await asyncio.to_thread(self.start, *args)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RestartableBroker]:
    """A started broker process; killed at teardown."""
    process = RestartableBroker(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.kill()


async def test_after_a_restart_calls_in_flight_fail_and_the_next_go_through(
    broker: RestartableBroker,
) -> None:
    async with Client(broker.url) as client:
        kept = await client.add("q", "before")
        waiting = asyncio.ensure_future(client.wait(kept))
        await client.counts("q")  # replied after the wait was read: the wait is in flight
        lost = client.connection
        assert lost.max_frame == 1 << 20
        broker.kill()
        with pytest.raises(ConnectionLost):
            async with asyncio.timeout(10):
                await waiting
        await broker.restart("--max-frame", "65536")

        added = await client.add("q", "after")
        assert client.connection is not lost and client.connection.failure is None
        before, after = await client.get_job(kept), await client.get_job(added)
        assert before is not None and before.data == "before"
        assert after is not None and after.data == "after"
        # The frame limit is the new broker's.
        assert client.connection.max_frame == 65536
        with pytest.raises(ValueError, match="frame limit is 65,536 bytes"):
            await client.add("q", "x" * 100_000)


async def test_without_reconnect_a_lost_connection_stays_lost(broker: RestartableBroker) -> None:
    async with Client(broker.url, reconnect=False) as client:
        await client.add("q", 1)
        broker.kill()
        await broker.restart()
        with pytest.raises(ConnectionLost):
            async with asyncio.timeout(5):
                await client.add("q", 2)
        with pytest.raises(ConnectionLost):
            await client.counts("q")
        with pytest.raises(ConnectionLost):
            client.events("q")
    async with Client(broker.url) as other:
        assert (await other.counts("q"))["waiting"] == 1


async def test_a_call_while_the_broker_is_down_fails_within_the_timeout_or_waits_for_it(
    broker: RestartableBroker,
) -> None:
    async with Client(broker.url, timeout=1.0) as quick, \
            Client(broker.url, timeout=30.0) as patient:
        broker.kill()
        await asyncio.wait_for(quick.connection.wait_closed(), 10)  # the client has noticed
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match=f"127.0.0.1:{broker.port}"):
            await quick.add("q", "lost")
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 3.0, f"gave up after {elapsed:.2f} s with a 1 s timeout"

        during = asyncio.ensure_future(patient.add("q", "during the restart"))
        await broker.restart()
        job_id = await asyncio.wait_for(during, 30)
        job = await patient.get_job(job_id)
        assert job is not None and job.data == "during the restart"
        assert (await quick.counts("q"))["waiting"] == 1


async def test_calls_made_together_during_a_restart_share_one_new_connection(
    broker: RestartableBroker, monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[Connection] = []
    open_connection = Connection.open.__func__  # type: ignore[attr-defined]

    async def counting_open(cls: type[Connection], *args: Any, **kwargs: Any) -> Connection:
        connection: Connection = await open_connection(cls, *args, **kwargs)
        opened.append(connection)
        return connection

    async with Client(broker.url, timeout=30) as client:
        monkeypatch.setattr(Connection, "open", classmethod(counting_open))
        broker.kill()
        await asyncio.wait_for(client.connection.wait_closed(), 10)
        calls = [asyncio.ensure_future(client.add("q", n)) for n in range(50)]
        await broker.restart()
        ids = await asyncio.wait_for(asyncio.gather(*calls), 30)
        assert len(set(ids)) == 50
        assert len(opened) == 1 and client.connection is opened[0]
        assert (await client.counts("q"))["waiting"] == 50


async def test_event_streams_end_with_connection_lost_and_a_new_one_follows_the_queue(
    broker: RestartableBroker,
) -> None:
    async with Client(broker.url) as client:
        stream = client.events("q")
        first = await client.add("q", 1)
        event = await asyncio.wait_for(anext(stream), 10)
        assert (event.kind, event.job) == ("added", first)
        broker.kill()
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(anext(stream), 10)
        await broker.restart()

        fresh = client.events("q")  # made while disconnected: it watches once reconnected
        second = await client.add("q", 2)
        event = await asyncio.wait_for(anext(fresh), 10)
        assert (event.kind, event.job) == ("added", second)
        await fresh.aclose()
        await stream.aclose()


def test_a_sync_client_reconnects_and_opting_out_works(broker: RestartableBroker) -> None:
    # A wait that had not left yet when the broker died would fail too, after ``timeout``.
    with SyncClient(broker.url, timeout=2.0) as client, \
            SyncClient(broker.url, reconnect=False) as fragile:
        kept = client.add("q", "before")
        outcome: list[BaseException] = []
        waiting = threading.Event()

        def wait() -> None:
            waiting.set()
            try:
                client.wait(kept)
            except BaseException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        assert waiting.wait(10)
        client.counts("q")
        broker.kill()
        waiter.join(10)
        assert not waiter.is_alive() and len(outcome) == 1
        assert isinstance(outcome[0], ConnectionLost)

        broker.start()
        added = client.add("q", "after")
        job = client.get_job(kept)
        assert job is not None and job.data == "before"
        assert client.counts("q")["waiting"] == 2 and added != kept
        with pytest.raises(ConnectionLost):
            fragile.counts("q")
