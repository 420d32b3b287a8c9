"""Safe defaults: a broker without users serves this machine only, unless ``--insecure``."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pytest
from integration_support import subprocess_env
from processes import ROOT

from conveyor.broker import Broker, Users
from conveyor.broker.testing import peer_allowed
from conveyor.client import Client, RequestRefused

if TYPE_CHECKING:
    from integration_support import BrokerProcess

REFUSAL = ("binding to 0.0.0.0 without --users would let anyone on the network control every "
           "queue; pass --users PATH, or --insecure to accept that")


def outside_address() -> str | None:
    """An address of this machine other than loopback, or None when it has none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_broker_refuses_to_bind_beyond_loopback_without_users_in_one_line() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.7", "broker.example"):
        result = subprocess.run(
            [sys.executable, "-m", "conveyor.broker", "--in-memory", "--port", "0",
             "--host", host], cwd=ROOT, env=subprocess_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, result
        assert result.stderr == f"broker: {REFUSAL.replace('0.0.0.0', host)}\n", result
        assert result.stdout == ""
    with pytest.raises(ValueError, match="pass --users PATH, or --insecure"):
        Broker(host="0.0.0.0")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_users(host: str) -> None:
    Broker(host=host)


async def test_insecure_serves_every_address_and_warns_at_every_start(
        start_broker: Callable[..., BrokerProcess]) -> None:
    for _ in range(2):
        process = start_broker("--host", "0.0.0.0", "--insecure", "--in-memory")
        assert process.line.startswith("listening on 0.0.0.0:")
        port = int(process.url.rpartition(":")[2])
        async with Client(f"127.0.0.1:{port}") as client:
            await client.add("open", {})
        process.stop()
        warnings = [line for line in process.log.splitlines() if " WARNING " in line]
        assert len(warnings) == 1, process.log
        assert (f"--insecure: no users file; anyone who can reach 0.0.0.0:{port} controls every "
                "queue") in warnings[0]


async def test_an_insecure_broker_warns_even_on_loopback(
        make_broker: Callable[..., Awaitable[Broker]], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="broker"):
        await make_broker(insecure=True)
    assert any("--insecure: no users file" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="broker"):
        await make_broker()
        await make_broker(insecure=True, users=Users({}))
    assert not any("--insecure" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("peer", "users", "insecure", "allowed"), [
    ("127.0.0.1", None, False, True),
    ("127.8.9.1", None, False, True),
    ("::1", None, False, True),
    ("::ffff:127.0.0.1", None, False, True),
    ("192.0.2.2", None, False, False),
    ("fd00::2", None, False, False),
    ("::ffff:192.0.2.2", None, False, False),
    ("192.0.2.2", None, True, True),
    ("192.0.2.2", object(), False, True),
])
def test_without_users_only_loopback_peers_are_served(peer: str, users: object, insecure: bool,
                                                      allowed: bool) -> None:
    assert peer_allowed(peer, users=users, insecure=insecure) is allowed


async def test_an_insecure_broker_serves_a_client_from_another_address() -> None:
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address other than loopback")
    broker = Broker(host="0.0.0.0", port=0, insecure=True)
    await broker.start()
    try:
        async with Client(f"{address}:{broker.port}") as client:
            await client.add("remote", {})
        # The check behind the bind: the same connection, to a broker no longer insecure, is
        # closed with an error the client reads.
        broker.insecure = False
        with pytest.raises(RequestRefused, match="serves connections from this machine only"):
            async with Client(f"{address}:{broker.port}", reconnect=False, timeout=5) as client:
                await client.counts("remote")
    finally:
        await broker.close()
