"""The data directory holds every payload: the broker creates it, and every file in it, for its
own user only, whatever the umask."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from log_support import start_broker

from conveyor.broker import Broker
from conveyor.client import Client


async def test_the_data_directory_and_its_files_are_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    data = tmp_path / "parent" / "data"
    umask = os.umask(0)
    try:
        broker = Broker(port=0, data_dir=data, fsync="always", compact_floor=8192,
                        compact_ratio=1.5)
        await broker.start()
        assert broker.log is not None
        try:
            async with Client(f"127.0.0.1:{broker.port}") as client:
                deadline = time.monotonic() + 20
                # A compaction (its child process too) writes a base file and a new manifest.
                while broker.log.compactions == 0:
                    assert time.monotonic() < deadline, "no compaction within 20 s"
                    await client.add_bulk("q", ["x" * 500] * 10)
                    await client.drain("q")
                await client.add("q", "kept")
        finally:
            await broker.close()
    finally:
        os.umask(umask)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data.iterdir()}
    assert any(name.startswith("base-") for name in modes), modes
    assert {"MANIFEST", "LOCK"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)


def test_the_command_line_broker_creates_its_data_directory_private(tmp_path: Path) -> None:
    """The command line checks the data directory before opening the log: it creates it the
    same way, for the broker's user only, not with the umask's 0755."""
    data = tmp_path / "parent" / "data"
    umask = os.umask(0o022)  # the child inherits it: the usual umask, which leaves 0755
    try:
        broker = start_broker(data, stderr_path=tmp_path / "broker.stderr")
    finally:
        os.umask(umask)
    try:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
    finally:
        assert broker.stop() == 0, broker.stderr
