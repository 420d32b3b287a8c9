"""``python -m conveyor.broker``: run a broker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from conveyor.protocol import DEFAULT_MAX_FRAME

from ._log import (
    DEFAULT_COMPACT_FLOOR,
    DEFAULT_COMPACT_RATIO,
    DEFAULT_DISK_RESERVE,
    FsyncPolicy,
    LogError,
)
from ._queues import DEFAULT_KEEP, DEFAULT_MAX_REDELIVERIES
from ._server import DEFAULT_MAX_CONNECTIONS, DEFAULT_PORT, DEFAULT_SHUTDOWN_GRACE, Broker

__all__ = ["main"]

log = logging.getLogger("broker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conveyor.broker", description="Run a Conveyor job-queue broker."
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--data-dir", default="./conveyor-data", metavar="DIR",
                        help="directory of the append-only log (default: %(default)s)")
    parser.add_argument("--in-memory", action="store_true",
                        help="keep no log: every job is lost when the broker stops")
    parser.add_argument("--fsync", choices=[p.value for p in FsyncPolicy],
                        default=FsyncPolicy.EVERYSEC.value,
                        help="always: fsync before acknowledging; everysec: at least once a "
                             "second; no: leave it to the OS (default: %(default)s)")
    parser.add_argument("--salvage", action="store_true",
                        help="start on a log damaged before its tail, keeping every valid record")
    parser.add_argument("--compact-floor", type=int, default=DEFAULT_COMPACT_FLOOR,
                        metavar="BYTES",
                        help="never compact a log smaller than this (default: %(default)s)")
    parser.add_argument("--compact-ratio", type=float, default=DEFAULT_COMPACT_RATIO,
                        help="compact once the log is this many times the live state "
                             "(default: %(default)s)")
    parser.add_argument("--disk-reserve", type=int, default=DEFAULT_DISK_RESERVE,
                        metavar="BYTES",
                        help="disk space the log holds in reserve for when its disk fills up "
                             "(at least; the live state's size if larger; 0: none) "
                             "(default: %(default)s)")
    parser.add_argument("--shutdown-grace", type=float, default=DEFAULT_SHUTDOWN_GRACE,
                        metavar="SECONDS",
                        help="on SIGTERM, wait this long for active jobs (default: %(default)s)")
    parser.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME, metavar="BYTES",
                        help="largest frame accepted (default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                        help="most open connections (default: %(default)s)")
    parser.add_argument("--max-redeliveries", type=int, default=DEFAULT_MAX_REDELIVERIES,
                        help="times a job may be re-queued after its worker's connection drops "
                             "before it fails (default: %(default)s)")
    parser.add_argument("--keep-completed", type=int, default=DEFAULT_KEEP, metavar="N",
                        help="completed jobs retained per queue (default: %(default)s)")
    parser.add_argument("--keep-failed", type=int, default=DEFAULT_KEEP, metavar="N",
                        help="failed jobs retained per queue (default: %(default)s)")
    parser.add_argument("--keep-age", type=float, default=None, metavar="SECONDS",
                        help="forget completed and failed jobs this long after they finish "
                             "(default: no age limit, only the counts)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser


async def _serve(args: argparse.Namespace) -> None:
    broker = Broker(
        host=args.host,
        port=args.port,
        data_dir=None if args.in_memory else args.data_dir,
        fsync=args.fsync,
        salvage=args.salvage,
        compact_floor=args.compact_floor,
        compact_ratio=args.compact_ratio,
        disk_reserve=args.disk_reserve,
        shutdown_grace=args.shutdown_grace,
        max_frame=args.max_frame,
        max_connections=args.max_connections,
        max_redeliveries=args.max_redeliveries,
        keep_completed=args.keep_completed,
        keep_failed=args.keep_failed,
        keep_age=args.keep_age,
    )
    await broker.start()
    recovery = broker.recovery
    if recovery is not None:
        for warning in recovery.warnings:
            log.warning("%s", warning)
        log.info("recovered %d jobs (%d waiting) from %d records, %d bytes, in %.3f s",
                 recovery.jobs, recovery.waiting, recovery.records, recovery.bytes,
                 recovery.seconds)
    print(f"listening on {args.host}:{broker.port}", flush=True)
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(broker.serve_forever())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, serving.cancel)
    try:
        await serving
    except asyncio.CancelledError:
        log.info("shutting down")
    finally:
        await broker.close()


def _run(coro_args: argparse.Namespace) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(coro_args))
    else:
        uvloop.run(_serve(coro_args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the broker; return the process exit status."""
    args = _parser().parse_args(argv)
    for name in ("max_frame", "max_connections"):
        if getattr(args, name) < 1:
            print(f"broker: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.disk_reserve < 0:
        print("broker: --disk-reserve must be at least 0", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _run(args)
    except LogError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"broker: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0
