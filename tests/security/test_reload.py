"""``conveyor broker --users FILE`` reads the file again on SIGHUP: connections whose user lost
rights, or the way it logged in, are closed, the others go on; a broken file changes nothing."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
import trustme
from processes import eventually
from security_support import (
    CONVEYOR_BROKER,
    BrokerProcess,
    RawConnections,
    SecureBroker,
    StartBroker,
    frames,
    is_error,
    run_conveyor,
    url_of,
    write_users,
)

from conveyor.broker import server_context
from conveyor.client import AuthenticationFailed, Client, Forbidden, tls_context
from conveyor.protocol import ErrorCode

ALICE = "alice-Ibex-1234"
BOB = "bob-Yak-5678"
BEFORE: dict[str, dict[str, Any]] = {
    "alice": {"password": ALICE, "produce": ["q*"], "read": ["q*"]},
    "bob": {"password": BOB, "produce": ["q*"], "read": ["q*"]},
}
RELOADED = "reloaded the users file"


def _start(broker_process: StartBroker, users_path: Path,
           users: dict[str, dict[str, Any]]) -> BrokerProcess:
    write_users(users_path, users)
    return broker_process(*CONVEYOR_BROKER, "--users", str(users_path), "--host", "127.0.0.1",
                          "--port", "0", "--in-memory")


async def _reload(broker: BrokerProcess, users_path: Path, users: dict[str, dict[str, Any]] | str,
                  line: str) -> None:
    """Rewrite the users file (a TOML text as it is), send SIGHUP, and wait until the broker has
    logged its ``line``-th reload outcome."""
    seen = broker.log.count(line)
    if isinstance(users, str):
        users_path.write_text(users)
    else:
        write_users(users_path, users)
    broker.signal(signal.SIGHUP)
    await eventually(lambda: broker.log.count(line) > seen, f"the broker logs {line!r}")


VARIANTS = {
    "bob removed": ({"alice": BEFORE["alice"]}, True),
    "bob lost read": ({**BEFORE, "bob": {"password": BOB, "produce": ["q*"]}}, True),
    "bob's read narrowed": ({**BEFORE, "bob": {"password": BOB, "produce": ["q*"],
                                               "read": ["q1"]}}, True),
    "alice gained admin": ({**BEFORE, "alice": {**BEFORE["alice"], "admin": ["q*"]}}, False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_a_reload_closes_only_the_connections_whose_rights_shrank(
        users_path: Path, broker_process: StartBroker, raw: RawConnections,
        variant: str) -> None:
    after, bob_closed = VARIANTS[variant]
    broker = _start(broker_process, users_path, BEFORE)
    async with Client(url_of(broker.port, "alice", ALICE), reconnect=False) as alice:
        connection = alice.connection
        job_id = await alice.add("q1", {"n": 1})
        bob = await raw.login(broker.port, "bob", BOB)

        await _reload(broker, users_path, after, RELOADED)

        if bob_closed:
            (error,) = frames(await bob.rest())
            assert is_error(error, ErrorCode.FORBIDDEN), error
            assert "bob" in error["message"], error
        else:
            bob.send({"t": "get_counts", "req": 1, "queue": "q1"})
            counts = await bob.receive()
            assert counts["t"] == "counts" and counts["waiting"] == 1, counts
        # Alice goes on, on the same connection, with what she may do now.
        assert alice.connection is connection and connection.failure is None
        assert await alice.add("q1", {"n": 2}) > job_id
        assert (await alice.counts("q1"))["waiting"] == 2
        if "admin" in after["alice"]:
            assert await alice.drain("q1") == 2
        else:
            with pytest.raises(Forbidden):
                await alice.drain("q1")
        assert connection.failure is None

    # Who logs in after the reload gets the rights of the new file.
    if "bob" not in after:
        with pytest.raises(AuthenticationFailed):
            await Client(url_of(broker.port, "bob", BOB), reconnect=False).connect()
    else:
        async with Client(url_of(broker.port, "bob", BOB)) as bob_again:
            await bob_again.add("q1", {"n": 3})
            if "q*" not in after["bob"].get("read", ()):
                with pytest.raises(Forbidden):
                    await bob_again.counts("q2")


async def test_a_broken_file_on_reload_keeps_the_users(
        users_path: Path, broker_process: StartBroker) -> None:
    broker = _start(broker_process, users_path, BEFORE)
    async with Client(url_of(broker.port, "alice", ALICE), reconnect=False) as alice:
        await _reload(broker, users_path, "[users.alice\nsecret = ", "kept the users")
        (line,) = [line for line in broker.log.splitlines() if "kept the users" in line]
        assert " ERROR " in line and str(users_path) in line, line
        assert RELOADED not in broker.log
        await alice.add("q1", {"n": 1})
        assert alice.connection.failure is None
    for user, password in (("alice", ALICE), ("bob", BOB)):
        async with Client(url_of(broker.port, user, password)) as client:
            assert (await client.counts("q1"))["waiting"] == 1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: ``ca``, the broker's ``cert`` and ``key`` (127.0.0.1), and ``client``: the
    certificate and key of a client whose CN is ``ops``."""
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    broker = ca.issue_cert("127.0.0.1")
    broker.cert_chain_pems[0].write_to_path(str(files["cert"]))
    broker.private_key_pem.write_to_path(str(files["key"]))
    ca.issue_cert("ops@example.org", common_name="ops").private_key_and_cert_chain_pem \
        .write_to_path(str(files["client"]))
    return files


OPS = "ops-Gnu-9012"
OPS_RIGHTS = {"produce": ["q*"], "read": ["q*"]}
OPS_WITHOUT: dict[str, dict[str, Any]] = {
    "certificate": {"password": OPS, **OPS_RIGHTS},
    "secret": {"certificate": True, **OPS_RIGHTS},
}
"""The user ``ops`` after a reload that took away its certificate login, or its secret."""


@pytest.mark.parametrize("taken", list(OPS_WITHOUT))
async def test_a_reload_closes_the_connections_that_logged_in_the_way_taken_away(
        users_path: Path, secure_broker: SecureBroker, pki: dict[str, Path], taken: str) -> None:
    broker = await secure_broker(
        {"ops": {"password": OPS, "certificate": True, **OPS_RIGHTS}},
        ssl=server_context(pki["cert"], pki["key"], pki["ca"], "optional"))
    address = f"127.0.0.1:{broker.port}"
    by_certificate = Client(f"conveyors://{address}", reconnect=False,
                            ssl=tls_context(ca=pki["ca"], cert=pki["client"]))
    by_secret = Client(f"conveyors://ops:{OPS}@{address}", reconnect=False,
                       ssl=tls_context(ca=pki["ca"]))
    async with by_certificate, by_secret:
        for client in (by_certificate, by_secret):
            await client.add("q1", {"n": 1})
        write_users(users_path, {"ops": OPS_WITHOUT[taken]})
        assert broker.reload_users()

        closed, kept = ((by_certificate, by_secret) if taken == "certificate"
                        else (by_secret, by_certificate))
        await asyncio.wait_for(closed.connection.wait_closed(), 10.0)
        way = "a client certificate" if taken == "certificate" else "a secret"
        assert f"user 'ops' may no longer log in with {way}" in str(closed.connection.failure)
        assert (await kept.counts("q1"))["waiting"] == 2
        assert kept.connection.failure is None


def test_a_missing_users_file_stops_the_broker_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = run_conveyor("broker", "--users", str(missing), "--host", "127.0.0.1", "--port", "0",
                          "--in-memory", cwd=tmp_path)
    assert result.returncode != 0
    assert "listening on" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
