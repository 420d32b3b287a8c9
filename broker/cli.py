"""``python -m conveyor.broker``: run a broker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from conveyor.protocol import DEFAULT_MAX_FRAME

from ._exposure import binding_problem
from ._log import (
    DEFAULT_COMPACT_FLOOR,
    DEFAULT_COMPACT_RATIO,
    DEFAULT_DISK_RESERVE,
    FsyncPolicy,
    LogError,
)
from ._manifest import make_directory
from ._queues import DEFAULT_KEEP, DEFAULT_MAX_REDELIVERIES
from ._server import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PORT,
    DEFAULT_SHUTDOWN_GRACE,
    Broker,
)
from ._tls import ClientAuth, TLSError, server_context
from ._users import UsersError
from ._watchers import DEFAULT_MAX_WAITS

__all__ = ["main"]

log = logging.getLogger("broker")

PROG: Final = "python -m conveyor.broker"
MIN_MAX_FRAME: Final = 4096
"""Smallest ``--max-frame`` (bytes): room for a job of a few bytes and its envelope."""
MAX_MAX_FRAME: Final = 1 << 30
"""Largest ``--max-frame`` (bytes): clients refuse replies beyond it."""


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run a Conveyor job-queue broker.")
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
    parser.add_argument("--handshake-timeout", type=float, default=DEFAULT_HANDSHAKE_TIMEOUT,
                        metavar="SECONDS",
                        help="close a connection that has not sent its hello within this "
                             "(default: %(default)s)")
    parser.add_argument("--frame-timeout", type=float, default=DEFAULT_FRAME_TIMEOUT,
                        metavar="SECONDS",
                        help="close a connection that sits in the middle of a frame for longer "
                             "(default: %(default)s)")
    parser.add_argument("--max-waits", type=int, default=DEFAULT_MAX_WAITS, metavar="N",
                        help="most wait requests one connection may have pending "
                             "(default: %(default)s)")
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
    parser.add_argument("--no-stats", dest="stats", action="store_false",
                        help="do not count and time each try (the tries started and retried, "
                             "how long jobs waited and ran) for get_stats and the dashboard; "
                             "counts, the rates of jobs added, completed and failed, workers "
                             "and the broker's figures remain")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    security = parser.add_argument_group("security")
    security.add_argument("--users", default=None, metavar="PATH",
                          help="users file (TOML; `conveyor user` edits it): every client "
                               "must log in as one of its users, and may do only what its "
                               "permissions allow; read again on SIGHUP")
    security.add_argument("--insecure", action="store_true",
                          help="without --users, serve other machines too (anyone who reaches "
                               "the port controls every queue; logged as a warning)")
    security.add_argument("--tls-cert", default=None, metavar="PATH",
                          help="speak TLS with this certificate chain (PEM); needs --tls-key")
    security.add_argument("--tls-key", default=None, metavar="PATH",
                          help="the certificate's private key (PEM)")
    security.add_argument("--tls-client-ca", default=None, metavar="PATH",
                          help="verify client certificates against these CAs (mutual TLS)")
    security.add_argument("--tls-client-auth", default=None,
                          choices=[auth.value for auth in ClientAuth],
                          help="with --tls-client-ca: must a client show a certificate "
                               "(default: required)")
    return parser


async def _serve(args: argparse.Namespace, context: ssl.SSLContext | None) -> None:
    broker = Broker(
        ssl=context,
        insecure=args.insecure,
        users=args.users,
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
        handshake_timeout=args.handshake_timeout,
        frame_timeout=args.frame_timeout,
        max_waits=args.max_waits,
        max_redeliveries=args.max_redeliveries,
        keep_completed=args.keep_completed,
        keep_failed=args.keep_failed,
        keep_age=args.keep_age,
        stats=args.stats,
    )
    await broker.start()
    recovery = broker.recovery
    if recovery is not None:
        for warning in recovery.warnings:
            log.warning("%s", warning)
        log.info("recovered %d jobs (%d waiting) from %d records, %d bytes, in %.3f s",
                 recovery.jobs, recovery.waiting, recovery.records, recovery.bytes,
                 recovery.seconds)
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(broker.serve_forever())
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, serving.cancel)
    loop.add_signal_handler(signal.SIGHUP, broker.reload_users)
    # Only now: whoever waits for this line may signal the broker the moment it reads it.
    print(f"listening on {args.host}:{broker.port}", flush=True)
    try:
        await serving
    except asyncio.CancelledError:
        log.info("shutting down")
    finally:
        await broker.close()


def _run(coro_args: argparse.Namespace, context: ssl.SSLContext | None) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(coro_args, context))
    else:
        uvloop.run(_serve(coro_args, context))


def _problem(args: argparse.Namespace) -> str | None:
    """Why the options cannot be used, naming the first bad one; None when they all can."""
    checks: list[tuple[str, bool, str]] = [
        ("port", 0 <= args.port <= 65535, "an integer from 0 to 65535"),
        ("max-frame", MIN_MAX_FRAME <= args.max_frame <= MAX_MAX_FRAME,
         f"a number of bytes from {MIN_MAX_FRAME} to {MAX_MAX_FRAME}"),
        ("max-connections", args.max_connections >= 1, "at least 1"),
        ("max-waits", args.max_waits >= 1, "at least 1"),
        ("handshake-timeout", math.isfinite(args.handshake_timeout)
         and args.handshake_timeout > 0, "a number of seconds above 0"),
        ("frame-timeout", math.isfinite(args.frame_timeout) and args.frame_timeout > 0,
         "a number of seconds above 0"),
        ("max-redeliveries", args.max_redeliveries >= 0, "0 or more"),
        ("keep-completed", args.keep_completed >= 0, "0 or more"),
        ("keep-failed", args.keep_failed >= 0, "0 or more"),
        ("keep-age", args.keep_age is None or (math.isfinite(args.keep_age) and args.keep_age > 0),
         "a number of seconds above 0"),
        ("compact-floor", args.compact_floor >= 0, "a number of bytes, 0 or more"),
        ("disk-reserve", args.disk_reserve >= 0, "a number of bytes, 0 or more"),
        ("compact-ratio", math.isfinite(args.compact_ratio) and args.compact_ratio > 1,
         "a number above 1"),
        ("shutdown-grace", math.isfinite(args.shutdown_grace) and args.shutdown_grace >= 0,
         "a number of seconds, 0 or more"),
    ]
    for name, ok, wanted in checks:
        if not ok:
            value = getattr(args, name.replace("-", "_"))
            return f"--{name} must be {wanted}, got {value}"
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together: give both, or neither"
    if args.tls_cert is None and args.tls_client_ca is not None:
        return "--tls-client-ca needs --tls-cert and --tls-key"
    if args.tls_client_auth is not None and args.tls_client_ca is None:
        return "--tls-client-auth needs --tls-client-ca"
    return binding_problem(args.host, users=args.users, insecure=args.insecure)


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context the options ask for, or None; raises ``TLSError``."""
    if args.tls_cert is None:
        return None
    return server_context(args.tls_cert, args.tls_key, args.tls_client_ca,
                          args.tls_client_auth or ClientAuth.REQUIRED)


def _data_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot hold the log (it is created when missing); None when it can."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        return "it exists and is not a directory"
    try:
        # Created as the log would create it, private to the broker's user whatever the umask.
        make_directory(directory)
    except OSError as exc:
        problem = str(exc.strerror or exc)
        if exc.filename is not None and exc.filename != str(directory):
            problem += f" ({exc.filename})"
        return problem
    if not directory.is_dir():
        return "it is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the broker; return the process exit status (2: bad options, 1: cannot start)."""
    args = _parser(prog).parse_args(argv)
    problem = _problem(args)
    if problem is not None:
        print(f"broker: {problem}", file=sys.stderr)
        return 2
    if not args.in_memory:
        problem = _data_dir_problem(args.data_dir)
        if problem is not None:
            print(f"broker: cannot use data directory {args.data_dir}: {problem}",
                  file=sys.stderr)
            return 1
    try:
        context = _tls(args)
    except TLSError as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _run(args, context)
    except (LogError, UsersError) as exc:
        print(f"broker: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A bind error names no file; anything that does is the data directory's.
        if exc.filename is not None:
            print(f"broker: cannot use data directory {args.data_dir}: "
                  f"{exc.strerror or exc} ({exc.filename})", file=sys.stderr)
        else:
            print(f"broker: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                  file=sys.stderr)
        return 1
    return 0
