"""``conveyor dashboard`` (also ``python -m conveyor.dashboard``): serve the web UI and
``/metrics`` for a broker until SIGTERM or SIGINT.

Only the standard library is imported here: the web libraries come with the ``dashboard`` extra,
and their absence is reported in one line rather than a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, Final, NoReturn

__all__ = ["main"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7480
CLIENT_NAME: Final = "conveyor-dashboard"
CLIENT_TIMEOUT: Final = 3.0
"""Seconds a call may spend reaching the broker: a page says "unreachable" after this long."""
EXTRA_MODULES: Final = frozenset({"starlette", "uvicorn", "jinja2", "prometheus_client",
                                  "anyio", "h11", "markupsafe", "click"})
"""The ``dashboard`` extra's libraries and what they need: missing one means missing the extra."""
MISSING_EXTRA: Final = ("conveyor dashboard needs the dashboard extra: "
                        "pip install 'conveyor[dashboard]'")

_log = logging.getLogger("conveyor.dashboard")


class _Parser(argparse.ArgumentParser):
    """Reports a usage mistake as one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def _refresh(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0.05 <= value <= 3600):
        raise argparse.ArgumentTypeError(f"expected seconds from 0.05 to 3600, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The dashboard's command-line parser."""
    parser = _Parser(prog=prog, description="Serve Conveyor's web dashboard and Prometheus "
                     "metrics (/metrics) for a broker.")
    parser.add_argument("--url", default=None, metavar="URL",
                        help="broker address: HOST:PORT, conveyor://[USER[:SECRET]@]HOST[:PORT] "
                             "or conveyors://... for TLS (default: $CONVEYOR_URL, else "
                             "127.0.0.1:7400); the dashboard sees what this user may read")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s); only a loopback "
                             "address unless --insecure")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help="port to listen on, 0 for a free one (default: %(default)s)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening on a non-loopback address: anyone who reaches "
                             "it can read and steer the broker as the dashboard's user")
    parser.add_argument("--refresh", type=_refresh, default=1.0, metavar="SECONDS",
                        help="seconds between live updates (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "conveyor dashboard") -> int:
    """Run the dashboard until SIGTERM or SIGINT; return the exit status."""
    try:
        from .app import create_app  # noqa: F401  (imports the extra's libraries)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
            raise
        print(MISSING_EXTRA, file=sys.stderr)
        return 1
    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    from conveyor.client import parse_url

    from .security import is_loopback
    if not is_loopback(args.host) and not args.insecure:
        print(f"{prog}: refusing to listen on {args.host}, which is not a loopback address: "
              "the dashboard can steer the broker; pass --insecure to allow it", file=sys.stderr)
        return 2
    try:
        parse_url(args.url)
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        return _run_loop(_serve(args, prog))
    except KeyboardInterrupt:
        return 0


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    # uvloop when it is installed (it is a dependency where it builds), else plain asyncio.
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    status: int = uvloop.run(coro)
    return status


async def _serve(args: argparse.Namespace, prog: str) -> int:
    from conveyor.client import Client

    from .app import create_app
    from .security import allowed_hosts, is_loopback
    from .server import DashboardServer, bind

    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"{prog}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    port: int = sock.getsockname()[1]
    client = Client(args.url, name=CLIENT_NAME, timeout=CLIENT_TIMEOUT)
    app = create_app(client, refresh=args.refresh, hosts=allowed_hosts(args.host, port))
    server = DashboardServer(app, sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        if args.insecure and not is_loopback(args.host):
            _log.warning("the dashboard listens on %s, reachable from other machines: anyone "
                         "who can reach it can read and steer the broker as its user",
                         args.host)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"listening on http://{host}:{port}/", flush=True)
        await stop.wait()
        # Shutdown, in order: 1. the server (live streams, open responses, the app's feed);
        # 2. the broker connection.
        await server.stop()
    finally:
        await client.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0

