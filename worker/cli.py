"""``python -m conveyor.worker MODULE:FUNCTION``: run worker processes until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Final

from conveyor.client import Connection, ConveyorError, parse_url
from conveyor.protocol import check_queue_name

from .worker import DEFAULT_GRACE, DEFAULT_LEASE, Handler, Worker

__all__ = ["load_handler", "main"]

log = logging.getLogger("worker")

_THREAD_EXIT_WAIT: Final = 0.5
"""Seconds handler threads get to end after the shutdown before the process exits without them."""


class UsageError(Exception):
    """A command-line mistake, reported as one line."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conveyor.worker",
        description="Run Conveyor worker processes for one queue.",
    )
    parser.add_argument("handler", metavar="MODULE:FUNCTION",
                        help="the job handler, e.g. myapp.tasks:send_email")
    parser.add_argument("--queue", required=True, help="queue to take jobs from")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="jobs each process runs at once: its credit window (default: 1)")
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes, each with its own connection (default: 1)")
    parser.add_argument("--url", default=None,
                        help="broker address HOST:PORT (default: $CONVEYOR_URL or 127.0.0.1:7400)")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                        help="seconds running jobs get to finish on shutdown "
                             "(default: %(default)s)")
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE,
                        help="seconds the broker waits without hearing from a process before "
                             "taking its jobs back (default: %(default)s)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    return parser


def load_handler(spec: str) -> Handler:
    """Import ``MODULE:FUNCTION`` and return the function."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"handler {spec!r} is not of the form MODULE:FUNCTION")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise UsageError(f"{module_name!r} has no function {attribute!r}")
    return handler  # type: ignore[no-any-return]


async def _work(args: argparse.Namespace) -> None:
    worker = Worker(args.queue, load_handler(args.handler), url=args.url,
                    concurrency=args.concurrency, grace=args.grace, lease=args.lease,
                    name=f"worker-{os.getpid()}")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    await worker.run()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def _process(args: argparse.Namespace) -> int:
    """One worker process: run until signalled; return its exit status."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s")
    try:
        _run(_work(args))
    except (ConveyorError, UsageError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 1
    _exit_if_handlers_outlive_grace()
    return 0


def _exit_if_handlers_outlive_grace() -> None:
    """Exit now when plain handlers are still running in their threads after the shutdown.

    Their jobs were released already, but Python cannot stop a thread and the interpreter joins
    the handler threads at exit: without this, SIGTERM would take as long as the longest job.
    """
    deadline = time.monotonic() + _THREAD_EXIT_WAIT
    threads = [thread for thread in threading.enumerate()
               if thread is not threading.main_thread() and not thread.daemon]
    for thread in threads:
        # Idle pool threads end at once after the pool's shutdown; busy ones do not.
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = sum(thread.is_alive() for thread in threads)
    if busy:
        log.warning("%d handler thread(s) still running after the grace period; exiting anyway",
                    busy)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _child(args: argparse.Namespace) -> None:
    sys.exit(_process(args))


def _supervise(args: argparse.Namespace) -> int:
    """Start ``args.processes`` workers; forward SIGTERM/SIGINT; return the worst exit status."""
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_child, args=(args,), name=f"worker-{n}")
                for n in range(args.processes)]
    stopping = False

    def forward(signum: int = signal.SIGTERM, frame: object = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = []
    for child in children:
        if stopping:
            break
        child.start()
        started.append(child)
    if stopping:
        # A signal that came while a child was being started did not reach it.
        forward()
    status = 0
    for child in started:
        child.join()
        code = child.exitcode or 0
        status = max(status, code if code >= 0 else 128 - code)
    return status


async def _check_broker(url: str | None) -> None:
    connection = await Connection.open(url, name="worker-check")
    await connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker CLI; return the process exit status."""
    args = _parser().parse_args(argv)
    try:
        problem = check_queue_name(args.queue)
        if problem is not None:
            raise UsageError(problem)
        if args.concurrency < 1 or args.processes < 1:
            raise UsageError("--concurrency and --processes must be at least 1")
        if not args.lease > 0 or not args.grace >= 0:
            raise UsageError("--lease must be above 0 seconds and --grace 0 or more")
        parse_url(args.url)
        load_handler(args.handler)
    except (UsageError, ValueError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    if args.processes == 1:
        return _process(args)
    try:
        # Once here rather than once per process, so an unreachable broker is one line.
        asyncio.run(_check_broker(args.url))
    except ConveyorError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 1
    return _supervise(args)
