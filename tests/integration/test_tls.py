"""TLS: clients and workers through a real broker over TLS, certificates refused for each reason
a client would meet, and mutual TLS (certificates from ``trustme``, made at test time)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trustme
from integration_support import subprocess_env
from processes import ROOT

from conveyor.broker import Broker, server_context
from conveyor.client import Client, ConnectionLost, SyncClient, tls_context
from conveyor.worker import Job, Worker

if TYPE_CHECKING:
    from integration_support import BrokerProcess

MakeBroker = Callable[..., Awaitable[Broker]]


@dataclass(frozen=True)
class Pki:
    """A CA, the broker's certificate for 127.0.0.1 and localhost, and a client certificate
    whose CN is ``ops``, as PEM files."""

    directory: Path
    ca: trustme.CA
    ca_file: Path
    broker_cert: Path
    broker_key: Path
    client_cert: Path
    """The client's certificate and key in one file."""

    def leaf(self, name: str, cert: trustme.LeafCert) -> tuple[Path, Path]:
        """Write ``cert`` as ``name``.pem and ``name``.key."""
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return cert_file, key_file


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    broker = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("ops@example.org", common_name="ops")
    client_cert = directory / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_cert))
    pki = Pki(directory, ca, ca_file, directory / "broker.pem", directory / "broker.key",
              client_cert)
    pki.leaf("broker", broker)
    return pki


async def tls_broker(make_broker: MakeBroker, pki: Pki, *, cert: tuple[Path, Path] | None = None,
                     client_auth: str | None = None) -> Broker:
    cert_file, key_file = cert or (pki.broker_cert, pki.broker_key)
    context = server_context(cert_file, key_file,
                             pki.ca_file if client_auth is not None else None,
                             client_auth or "required")
    return await make_broker(ssl=context)


async def double(job: Job) -> int:
    return int(job.data) * 2


async def test_a_job_added_over_tls_is_run_by_a_worker_over_tls(make_broker: MakeBroker,
                                                                 pki: Pki) -> None:
    broker = await tls_broker(make_broker, pki)
    url = f"conveyors://127.0.0.1:{broker.port}"
    context = tls_context(ca=pki.ca_file)
    worker = Worker("tls", double, url=url, ssl=context, concurrency=2)
    running = asyncio.create_task(worker.run())
    try:
        async with Client(url, ssl=context) as client:
            job_id = await client.add("tls", 21)
            assert await client.wait(job_id, timeout=10) == 42
            assert (await client.counts("tls"))["completed"] == 1
    finally:
        await worker.close()
        await running


async def test_a_conveyors_url_trusts_the_ca_in_conveyor_tls_ca(
        make_broker: MakeBroker, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = await tls_broker(make_broker, pki)
    monkeypatch.setenv("CONVEYOR_TLS_CA", str(pki.ca_file))
    async with Client(f"conveyors://localhost:{broker.port}/") as client:
        await client.add("env", {})
        assert (await client.counts("env"))["waiting"] == 1

    def sync_counts() -> dict[str, int]:
        with SyncClient(f"conveyors://127.0.0.1:{broker.port}") as sync:
            return sync.counts("env")

    # In a thread: the broker answers on this thread's event loop.
    assert (await asyncio.to_thread(sync_counts))["waiting"] == 1


async def refused(url: str, context: ssl.SSLContext | None = None) -> str:
    """The one-line message of the ``ConnectionLost`` that connecting to ``url`` raises."""
    with pytest.raises(ConnectionLost) as caught:
        async with Client(url, ssl=context, timeout=5, reconnect=False) as client:
            await client.counts("never")
    message = str(caught.value)
    assert "\n" not in message
    return message


async def test_a_broker_certificate_from_another_ca_is_refused(make_broker: MakeBroker,
                                                               pki: Pki) -> None:
    broker = await tls_broker(make_broker, pki)
    other = pki.directory / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    message = await refused(f"conveyors://127.0.0.1:{broker.port}", tls_context(ca=other))
    assert message.startswith(f"TLS handshake with broker at conveyors://127.0.0.1:{broker.port} "
                              "failed: certificate verify failed: "), message
    assert "unable to get local issuer certificate" in message
    assert not broker.sessions


async def test_an_expired_broker_certificate_is_refused(make_broker: MakeBroker,
                                                        pki: Pki) -> None:
    now = datetime.datetime.now(datetime.UTC)
    expired = pki.ca.issue_cert("127.0.0.1", not_before=now - datetime.timedelta(days=30),
                                not_after=now - datetime.timedelta(days=1))
    broker = await tls_broker(make_broker, pki, cert=pki.leaf("expired", expired))
    message = await refused(f"conveyors://127.0.0.1:{broker.port}", tls_context(ca=pki.ca_file))
    assert "certificate verify failed: certificate has expired" in message, message


async def test_a_certificate_for_another_host_name_is_refused(make_broker: MakeBroker,
                                                              pki: Pki) -> None:
    other = pki.ca.issue_cert("broker.example")
    broker = await tls_broker(make_broker, pki, cert=pki.leaf("other-host", other))
    context = tls_context(ca=pki.ca_file)
    by_name = await refused(f"conveyors://localhost:{broker.port}", context)
    assert f"conveyors://localhost:{broker.port}" in by_name
    assert "Hostname mismatch" in by_name and "'localhost'" in by_name, by_name
    by_address = await refused(f"conveyors://127.0.0.1:{broker.port}", context)
    assert "IP address mismatch" in by_address and "'127.0.0.1'" in by_address, by_address


async def test_a_tls_client_of_a_plain_broker_is_told_so(broker: Broker, pki: Pki) -> None:
    message = await refused(f"conveyors://127.0.0.1:{broker.port}", tls_context(ca=pki.ca_file))
    assert f"broker at conveyors://127.0.0.1:{broker.port}" in message
    assert "wrong version number" in message, message


async def test_mutual_tls_gives_the_broker_the_client_certificate_cn(make_broker: MakeBroker,
                                                                     pki: Pki) -> None:
    broker = await tls_broker(make_broker, pki, client_auth="required")
    url = f"conveyors://127.0.0.1:{broker.port}"
    async with Client(url, ssl=tls_context(ca=pki.ca_file, cert=pki.client_cert)) as client:
        await client.counts("mtls")
        (session,) = broker.sessions
        assert session.certificate_user == "ops"
    message = await refused(url, tls_context(ca=pki.ca_file))
    assert f"broker at {url}" in message
    assert "client certificate" in message, message


async def test_optional_client_certificates_let_a_client_without_one_in(
        make_broker: MakeBroker, pki: Pki) -> None:
    broker = await tls_broker(make_broker, pki, client_auth="optional")
    url = f"conveyors://127.0.0.1:{broker.port}"
    async with Client(url, ssl=tls_context(ca=pki.ca_file)) as client:
        await client.counts("q")
        (session,) = broker.sessions
        assert session.certificate_user is None
    async with Client(url, ssl=tls_context(ca=pki.ca_file, cert=pki.client_cert)) as client:
        await client.counts("q")
        (session,) = broker.sessions
        assert session.certificate_user == "ops"
    # A certificate from a CA the broker does not trust is not "no certificate": it is refused.
    stranger = trustme.CA().issue_cert("x@example.org", common_name="ops")
    stranger_file = pki.directory / "stranger.pem"
    stranger.private_key_and_cert_chain_pem.write_to_path(str(stranger_file))
    message = await refused(url, tls_context(ca=pki.ca_file, cert=stranger_file))
    assert f"broker at {url}" in message
    assert not broker.sessions


def test_client_context_names_a_file_it_cannot_use(pki: Pki) -> None:
    missing = pki.directory / "missing.pem"
    with pytest.raises(ValueError, match=f"cannot use the TLS CA file {missing}: No such file"):
        tls_context(ca=missing)
    with pytest.raises(ValueError, match=f"TLS client certificate {missing}: No such file"):
        tls_context(cert=missing)
    with pytest.raises(ValueError, match="needs its certificate"):
        tls_context(key=pki.broker_key)


# The broker's command line.


def broker_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.broker", "--in-memory", "--port", "0",
                           *args], cwd=ROOT, env=subprocess_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def test_the_broker_refuses_tls_options_it_cannot_use_in_one_line(pki: Pki) -> None:
    cert, key = str(pki.broker_cert), str(pki.broker_key)
    missing = str(pki.directory / "missing.pem")
    cases = [
        (["--tls-cert", cert], 2, "broker: --tls-cert and --tls-key go together: give both, "
                                  "or neither"),
        (["--tls-key", key], 2, "broker: --tls-cert and --tls-key go together: give both, "
                                "or neither"),
        (["--tls-client-ca", cert], 2, "broker: --tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-auth", "optional"], 2,
         "broker: --tls-client-auth needs --tls-client-ca"),
        (["--tls-cert", missing, "--tls-key", key], 1,
         f"broker: cannot use the TLS certificate {missing} and key {key}: No such file or "
         "directory"),
        (["--tls-cert", cert, "--tls-key", str(pki.ca_file)], 1,
         f"broker: cannot use the TLS certificate {cert} and key {pki.ca_file}: "),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", missing], 1,
         f"broker: cannot use the TLS client CA {missing}: No such file or directory"),
    ]
    for args, status, line in cases:
        result = broker_cli(*args)
        assert result.returncode == status, (args, result)
        assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, (args, result)
        assert result.stdout == ""


async def test_a_broker_started_with_tls_options_serves_a_conveyors_client(
        start_broker: Callable[..., BrokerProcess], pki: Pki) -> None:
    process = start_broker("--tls-cert", str(pki.broker_cert), "--tls-key", str(pki.broker_key),
                           "--tls-client-ca", str(pki.ca_file), "--tls-client-auth", "optional")
    url = f"conveyors://{process.url}"
    async with Client(url, ssl=tls_context(ca=pki.ca_file)) as client:
        await client.add("cli-tls", {})
    # The conveyor command and worker read the CA and client certificate from the environment.
    env = subprocess_env({"CONVEYOR_TLS_CA": str(pki.ca_file),
                          "CONVEYOR_TLS_CERT": str(pki.client_cert)})
    status = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "conveyor.cli", "status", "--json", "--url", url],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status
    assert '"cli-tls"' in status.stdout
    plain = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "conveyor.cli", "status", "--url", url],
        cwd=ROOT, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=30)
    assert plain.returncode == 1
    assert plain.stderr.startswith(f"conveyor: TLS handshake with broker at {url} failed: "
                                   "certificate verify failed"), plain
