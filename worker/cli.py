"""``python -m conveyor.worker MODULE:OBJECT``: run worker processes until SIGTERM or SIGINT.

``OBJECT`` is a handler function (it serves the one ``--queue``) or a ``Tasks`` registry (every
queue of the registry, or those ``--queue`` names).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Coroutine, Sequence
from typing import Any, Final

from conveyor.client import Connection, ConveyorError, parse_url
from conveyor.protocol import check_queue_name

from .logs import FORMATS, configure_logging
from .supervisor import Supervisor
from .tasks import Task, Tasks
from .worker import DEFAULT_GRACE, DEFAULT_LEASE, Handler, Worker

__all__ = ["UsageError", "load_target", "main"]

log = logging.getLogger("conveyor.worker")

_THREAD_EXIT_WAIT: Final = 0.5
"""Seconds handler threads get to end after the shutdown before the process exits without them."""


class UsageError(Exception):
    """A command-line mistake, reported as one line."""


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run Conveyor worker processes: a handler function on one queue, or a "
                    "Tasks registry on its queues.",
    )
    parser.add_argument("target", metavar="MODULE:OBJECT",
                        help="a handler function (myapp.jobs:send_email) or a Tasks registry "
                             "(myapp.jobs:tasks)")
    parser.add_argument("--queue", action="append", metavar="NAME",
                        help="queue to take jobs from: required with a handler function; with a "
                             "registry, serve only this queue (repeatable; default: all of them)")
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="jobs each process runs at once per queue: its credit window; a "
                             "registry's tasks.queue(..., concurrency=) wins (default: 1)")
    parser.add_argument("--processes", type=int, default=1, metavar="P",
                        help="worker processes, each with its own connection (default: 1)")
    parser.add_argument("--url", default=None, metavar="URL",
                        help="broker address: HOST:PORT, conveyor://[USER@]HOST[:PORT], or "
                             "conveyors://... for TLS (CA and client certificate from "
                             "$CONVEYOR_TLS_CA, $CONVEYOR_TLS_CERT, $CONVEYOR_TLS_KEY) "
                             "(default: $CONVEYOR_URL or 127.0.0.1:7400)")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                        help="seconds running jobs get to finish on shutdown "
                             "(default: %(default)s)")
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE, metavar="SECONDS",
                        help="seconds the broker waits without hearing from a process before "
                             "taking its jobs back (default: %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="info logs a line per job started, completed and failed "
                             "(default: %(default)s)")
    parser.add_argument("--log-format", default="text", choices=FORMATS,
                        help="text lines, or one JSON object per line (default: %(default)s)")
    return parser


def load_target(spec: str) -> Handler | Tasks:
    """Import ``MODULE:OBJECT`` from the current directory (first) or the installed packages;
    return the handler function or ``Tasks`` registry it names.

    Raises:
        UsageError: a malformed spec, a module that cannot be imported, a missing attribute, or
            one that is neither a function nor a registry.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"{spec!r} is not of the form MODULE:OBJECT (a handler function or a "
                         f"Tasks registry)")
    # ``python -m`` puts the current directory first on sys.path; the ``conveyor`` script does
    # not. Conveyor's own modules are all conveyor.*, so a user's worker.py cannot shadow them.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    except Exception as exc:
        # A bug in the user's module: its traceback is what they need to fix it.
        traceback.print_exc()
        raise UsageError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") \
            from None
    try:
        target = getattr(module, attribute)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, Tasks):
        return target
    if isinstance(target, Task):
        raise UsageError(f"{spec!r} is one task of a Tasks registry: give the registry "
                         f"(MODULE:TASKS) to serve its tasks")
    if not callable(target):
        raise UsageError(f"{spec!r} is a {type(target).__name__}, not a function or a Tasks "
                         f"registry")
    return target  # type: ignore[no-any-return]


def _check_queues(spec: str, target: Handler | Tasks, queues: list[str] | None) -> None:
    for queue in queues or ():
        problem = check_queue_name(queue)
        if problem is not None:
            raise UsageError(f"--queue {queue!r}: {problem}")
    if not isinstance(target, Tasks):
        if not queues:
            raise UsageError(f"{spec!r} is a handler function: give the queue it serves with "
                             f"--queue NAME")
        if len(queues) > 1:
            raise UsageError(f"{spec!r} is a handler function: it serves one --queue, not "
                             f"{len(queues)}")
        return
    known = target.queues
    if not known:
        raise UsageError(f"the registry {spec!r} has no tasks")
    for queue in queues or ():
        if queue not in known:
            raise UsageError(f"the registry {spec!r} has no queue {queue!r} "
                             f"(its queues: {', '.join(known)})")


def _worker(args: argparse.Namespace) -> Worker:
    target = load_target(args.target)
    # The name the broker's statistics show (its host and pid are shown apart): what it runs.
    name = args.target
    options: dict[str, Any] = {"url": args.url, "concurrency": args.concurrency,
                               "grace": args.grace, "lease": args.lease, "name": name}
    if isinstance(target, Tasks):
        return Worker(target, queues=args.queue, **options)
    return Worker(args.queue[0], target, **options)


async def _work(args: argparse.Namespace) -> None:
    worker = _worker(args)
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
    configure_logging(args.log_level, args.log_format)
    try:
        _run(_work(args))
    except (ConveyorError, UsageError, ValueError) as exc:
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


async def _check_broker(url: str | None) -> None:
    connection = await Connection.open(url, name="worker-check")
    await connection.close()


def _check(args: argparse.Namespace) -> None:
    """Raise ``UsageError`` or ``ValueError`` (a bad URL) for a command line that cannot run."""
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.processes < 1:
        raise UsageError(f"--processes must be at least 1, got {args.processes}")
    if not args.lease > 0:
        raise UsageError(f"--lease must be above 0 seconds, got {args.lease:g}")
    if not args.grace >= 0:
        raise UsageError(f"--grace must be 0 seconds or more, got {args.grace:g}")
    parse_url(args.url)
    _check_queues(args.target, load_target(args.target), args.queue)


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m conveyor.worker") -> int:
    """Run the worker CLI; return the process exit status (2 for a bad command line)."""
    args = _parser(prog).parse_args(argv)
    try:
        _check(args)
    except (UsageError, ValueError) as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    if args.processes == 1:
        return _process(args)
    configure_logging(args.log_level, args.log_format)
    try:
        # Once here rather than once per process, so an unreachable broker is one line.
        asyncio.run(_check_broker(args.url))
    except ConveyorError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 1
    return Supervisor(args.processes, _child, (args,), grace=args.grace).run()
