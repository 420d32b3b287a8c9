"""``python -m broker``: run a broker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from protocol import DEFAULT_MAX_FRAME

from .queues import DEFAULT_KEEP, DEFAULT_MAX_REDELIVERIES
from .server import DEFAULT_MAX_CONNECTIONS, DEFAULT_PORT, Broker

__all__ = ["main"]

log = logging.getLogger("broker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m broker", description="Run a Conveyor job-queue broker."
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port; 0 picks a free one (default: %(default)s)")
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
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser


async def _serve(args: argparse.Namespace) -> None:
    broker = Broker(
        host=args.host,
        port=args.port,
        max_frame=args.max_frame,
        max_connections=args.max_connections,
        max_redeliveries=args.max_redeliveries,
        keep_completed=args.keep_completed,
        keep_failed=args.keep_failed,
    )
    await broker.start()
    print(f"listening on {args.host}:{broker.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")
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
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _run(args)
    except OSError as exc:
        print(f"broker: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0
