"""``conveyor add QUEUE --file PATH``: one job per line of a JSONL file, streamed.

The file is read a block at a time and never held whole: each block's complete lines are decoded
as JSON together, encoded to MessagePack, and sent as one bulk add at once, while the bulks before
it are still in flight (at most ``IN_FLIGHT`` of them). Memory stays flat whatever the file's size,
the jobs are added in the order of the lines, and reading, decoding and the broker's work overlap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Final

import msgspec
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from conveyor.client import Client, ConveyorError, JobOptions

from .output import error_console, print_json
from .runner import OK, CommandFailed, UsageError, connected, run

__all__ = ["BLOCK_BYTES", "IN_FLIGHT", "add_file"]

BLOCK_BYTES: Final = 256 * 1024
"""Bytes read at a time; a block's complete lines are one bulk add (about 8,000 short lines)."""
IN_FLIGHT: Final = 4
"""Bulk adds sent and not yet acknowledged, at most."""
FRAME_MARGIN: Final = 4096
"""Bytes of a frame kept for the envelope and a job's options: a payload larger than the
broker's frame limit less this is refused, naming its line."""
REFRESH: Final = 0.1
"""Seconds between redraws of the progress bar."""


class BadLine(Exception):
    """A line that cannot be a job; ``line`` is its number, from 1."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(slots=True)
class _Totals:
    added: int = 0
    """Jobs the broker has acknowledged."""
    added_lines: int = 0
    """Lines whose jobs the broker has acknowledged, all of them from the first on."""
    lines: int = 0
    """Lines read and sent so far (blank ones included)."""
    bytes: int = 0


class _Source:
    """The file's bytes, a block at a time. A regular file is read directly (it never blocks for
    long); a pipe or terminal through the event loop, so that what is sent goes out while the
    writer of the pipe is slow."""

    def __init__(self, stream: IO[bytes], *, size: int | None) -> None:
        self.stream = stream
        self.size = size
        """Bytes to read, when known (a regular file, not standard input)."""
        self._reader: asyncio.StreamReader | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._blocking = True

    async def start(self) -> None:
        fd = self.stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            # The event loop makes the descriptor non-blocking; a terminal or pipe shared with
            # the shell gets its mode back in ``close``.
            self._blocking = os.get_blocking(fd)
            loop = asyncio.get_running_loop()
            self._reader = asyncio.StreamReader(limit=BLOCK_BYTES)
            protocol = asyncio.StreamReaderProtocol(self._reader)
            self._transport, _ = await loop.connect_read_pipe(lambda: protocol, self.stream)

    async def read(self) -> bytes:
        """The next block; empty at the end."""
        if self._reader is None:
            return self.stream.read(BLOCK_BYTES)
        return await self._reader.read(BLOCK_BYTES)

    def close(self) -> None:
        if self._transport is not None:
            # Closing the transport stops reading at once and closes the descriptor later.
            self._transport.close()
            with contextlib.suppress(OSError, ValueError):
                os.set_blocking(self.stream.fileno(), self._blocking)
        elif self.stream is not sys.stdin.buffer:
            self.stream.close()


class _Parser:
    """Turns a run of lines into raw MessagePack payloads, or finds the first bad line."""

    def __init__(self, max_payload: int) -> None:
        self.max_payload = max_payload
        self._json = msgspec.json.Decoder()
        self._msgpack = msgspec.msgpack.Encoder()
        self._raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])

    def parse(self, lines: list[bytes], first: int) -> tuple[list[msgspec.Raw], BadLine | None]:
        """The payloads of ``lines`` (numbered from ``first``), blank lines skipped; with the
        first bad line, the payloads of the lines before it and why it is bad."""
        try:
            # One call per line (a line holding two values, or half of one, is bad), one
            # encode of the whole list, split back into raw values without copying.
            raws = self._raw_list.decode(self._msgpack.encode(list(map(self._json.decode, lines))))
        except (msgspec.DecodeError, TypeError, ValueError, OverflowError):
            return self._slowly(lines, first)
        if raws and max(map(len, raws)) > self.max_payload:
            return self._slowly(lines, first)
        return raws, None

    def _slowly(self, lines: list[bytes], first: int) -> tuple[list[msgspec.Raw], BadLine | None]:
        raws: list[msgspec.Raw] = []
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            number = first + index
            try:
                value = self._json.decode(line)
            except msgspec.DecodeError as exc:
                return raws, BadLine(number, f"not valid JSON ({exc})")
            try:
                raw = msgspec.Raw(self._msgpack.encode(value))
            except (TypeError, ValueError, OverflowError) as exc:
                return raws, BadLine(number, f"cannot be sent as MessagePack ({exc})")
            if len(raw) > self.max_payload:
                return raws, BadLine(number, f"its payload is {len(raw):,} bytes encoded, over "
                                             f"the {self.max_payload:,} bytes a job may have")
            raws.append(raw)
        return raws, None


class _Meter:
    """The progress bar on stderr (a terminal only): jobs added, their rate, and the time left
    judged by the bytes read of the file's size."""

    def __init__(self, queue: str, size: int | None) -> None:
        console = error_console()
        self.started = time.perf_counter()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._drawn = 0.0
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("adding to {task.description}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[jobs]} jobs"), TextColumn("{task.fields[rate]} jobs/s"),
                TimeRemainingColumn(), console=console, auto_refresh=False, transient=True)
            self._task = self._progress.add_task(queue, total=size, jobs="0", rate="-")
            self._progress.start()

    def show(self, totals: _Totals, *, force: bool = False) -> None:
        if self._progress is None or self._task is None:
            return
        now = time.perf_counter()
        if not force and now - self._drawn < REFRESH:
            return
        self._drawn = now
        rate = totals.added / max(now - self.started, 1e-9)
        self._progress.update(self._task, completed=totals.bytes, jobs=f"{totals.added:,}",
                              rate=f"{rate:,.0f}")
        self._progress.refresh()

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()


async def _stream(client: Client, queue: str, options: JobOptions, source: _Source,
                  totals: _Totals, meter: _Meter) -> None:
    """Add every line of ``source``; raise ``BadLine`` once the lines before the bad one are
    added."""
    parser = _Parser(client.connection.max_frame - FRAME_MARGIN)
    # Each bulk add in flight: its ids, its jobs, and the number of its last line.
    in_flight: deque[tuple[asyncio.Future[list[int]], int, int]] = deque()

    def count(jobs: int, last_line: int) -> None:
        totals.added += jobs
        totals.added_lines = last_line
        meter.show(totals)

    def harvest() -> None:
        # The oldest first: jobs are counted as added in the order of their lines.
        while in_flight and in_flight[0][0].done() and not in_flight[0][0].cancelled() \
                and in_flight[0][0].exception() is None:
            _, jobs, last_line = in_flight.popleft()
            count(jobs, last_line)

    async def settle(keep: int) -> None:
        harvest()
        while len(in_flight) > keep:
            future, jobs, last_line = in_flight.popleft()
            await future
            count(jobs, last_line)

    await source.start()
    # The start of a line that goes on in the next block (a long line: several blocks).
    partial: list[bytes] = []
    partial_size = 0
    bad: BadLine | None = None
    try:
        while bad is None:
            block = await source.read()
            totals.bytes += len(block)
            if block:
                end = block.rfind(b"\n")
                if end < 0:
                    partial.append(block)
                    partial_size += len(block)
                    if partial_size > parser.max_payload * 4 + BLOCK_BYTES:
                        # Longer than any job can be, whatever its JSON looks like.
                        bad = BadLine(totals.lines + 1, f"over {partial_size:,} bytes long, "
                                                        f"too long for a job")
                    continue
                body = b"".join((*partial, block[:end])) if partial else block[:end]
                partial = [block[end + 1:]]
                partial_size = len(partial[0])
            elif partial_size:
                body = b"".join(partial)
                partial, partial_size = [], 0
            else:
                break
            lines = body.split(b"\n")
            raws, bad = parser.parse(lines, totals.lines + 1)
            last_line = totals.lines + len(lines) if bad is None else bad.line - 1
            totals.lines += len(lines)
            if raws:
                in_flight.append((client.add_bulk_nowait(queue, raws, **options), len(raws),
                                  last_line))
                await client.connection.drain()
            await settle(IN_FLIGHT - 1)
        await settle(0)
    finally:
        # Acknowledged while this was reading or failing: those jobs were added.
        harvest()
        for future, _, _ in in_flight:
            future.cancel()
        if in_flight:
            await asyncio.wait([future for future, _, _ in in_flight])
        source.close()
    meter.show(totals, force=True)
    if bad is not None:
        raise bad


def _added(totals: _Totals) -> str:
    jobs = f"{totals.added:,} job" + ("" if totals.added == 1 else "s")
    if not totals.added_lines:
        return "nothing was added"
    return f"lines 1 to {totals.added_lines} were added ({jobs})"


def _open(path: str) -> _Source:
    if path == "-":
        return _Source(sys.stdin.buffer, size=None)
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed by _Source.close
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _Source(stream, size=os.fstat(stream.fileno()).st_size)


def add_file(args: argparse.Namespace, options: JobOptions) -> int:
    """Add one job per line of ``args.file``; print how many, how long it took and the rate."""

    async def body(client: Client) -> int:
        source = _open(args.file)
        totals = _Totals()
        meter = _Meter(args.queue, source.size)
        name = "standard input" if args.file == "-" else args.file
        try:
            await _stream(client, args.queue, options, source, totals, meter)
        except BadLine as exc:
            raise UsageError(f"{name} line {exc.line}: {exc.problem}; {_added(totals)}, nothing "
                             f"from line {exc.line} on") from None
        except ConveyorError as exc:
            # What was acknowledged is known; a bulk add in flight may or may not have been.
            raise CommandFailed(f"{exc}; {_added(totals)}, the lines after may or may not have "
                                f"been") from None
        finally:
            meter.stop()
        seconds = time.perf_counter() - meter.started
        rate = totals.added / max(seconds, 1e-9)
        if args.json:
            print_json({"queue": args.queue, "added": totals.added, "seconds": round(seconds, 3),
                        "jobs_per_s": round(rate)})
        else:
            took = f"{seconds:.2f}" if seconds >= 1 else f"{seconds:.3f}"
            print(f"added {totals.added:,} jobs to {args.queue} in {took} s ({rate:,.0f} jobs/s)",
                  flush=True)
        return OK

    return run(connected(args.url, body))
