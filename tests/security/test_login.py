"""Logging in: SCRAM-SHA-256 in the handshake, the failure delay, the per-address limit, and
nothing said (or logged) that a guesser or an onlooker could use."""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import scramp
from processes import eventually
from security_support import (
    MECHANISM,
    SECURITY_BROKER,
    Raw,
    RawConnections,
    SecureBroker,
    StartBroker,
    client_messages,
    frames,
    is_error,
    req_of,
    url_of,
    write_users,
)

from conveyor.broker import Broker
from conveyor.client import AuthenticationFailed, Client, ConnectionLost
from conveyor.protocol import PROTOCOL_VERSION, ErrorCode
from conveyor.worker import Job, Worker

SECRET = "s3cr3t-Zebra-4711"
WRONG = "wr0ng-Okapi-0815"
USERS = {
    "app": {"password": SECRET, "produce": ["q*"], "read": ["q*"]},
    "mailer": {"password": "mailer-Tapir-2931", "consume": ["q*"]},
    "root": {"password": "root-Gnu-7777", "produce": ["*"], "consume": ["*"], "read": ["*"],
             "admin": ["*"]},
}


async def refused(url: str) -> tuple[AuthenticationFailed, float]:
    """The error a client connecting to ``url`` gets, and the seconds it took to come."""
    client = Client(url, reconnect=False)
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as info:
        await client.connect()
    elapsed = time.monotonic() - started
    await client.close()
    return info.value, elapsed


async def test_right_secret_logs_in_and_a_consume_only_worker_runs_the_job(
        secure_broker: SecureBroker) -> None:
    broker = await secure_broker(USERS)

    async def double(job: Job) -> dict[str, Any]:
        return {"doubled": job.data["n"] * 2, "queue": job.queue}

    worker = Worker("q1", double, url=url_of(broker.port, "mailer", "mailer-Tapir-2931"))
    running = asyncio.create_task(worker.run())
    try:
        async with Client(url_of(broker.port, "app", SECRET)) as client:
            job_id = await client.add("q1", {"n": 21})
            assert await client.wait(job_id, timeout=10) == {"doubled": 42, "queue": "q1"}
    finally:
        await worker.close()
        await running


async def test_wrong_secret_and_unknown_user_fail_alike_after_the_delay(
        secure_broker: SecureBroker) -> None:
    delay = 0.3
    broker = await secure_broker(USERS, auth_failure_delay=delay)
    wrong, wrong_took = await refused(url_of(broker.port, "app", WRONG))
    unknown, unknown_took = await refused(url_of(broker.port, "nobody", SECRET))
    assert wrong.code == unknown.code == ErrorCode.AUTH_FAILED
    assert str(wrong) == str(unknown)
    assert wrong_took >= delay and unknown_took >= delay, (wrong_took, unknown_took)
    # The right secret is not held up by the failures before it.
    started = time.monotonic()
    async with Client(url_of(broker.port, "app", SECRET)) as client:
        assert (await client.counts("q1"))["waiting"] == 0
    assert time.monotonic() - started < delay


async def test_on_the_wire_an_unknown_user_looks_like_a_wrong_secret(
        secure_broker: SecureBroker, raw: RawConnections) -> None:
    broker = await secure_broker(USERS)
    answers = []
    for user in ("app", "nobody"):
        connection = await raw.open(broker.port)
        # The challenge has the same shape (salt, iteration count) for a name that is no user.
        scram = scramp.ScramClient([MECHANISM], user, WRONG)
        connection.send({"t": "hello", "version": PROTOCOL_VERSION, "mechanism": MECHANISM,
                         "auth": scram.get_client_first()})
        challenge = await connection.receive()
        assert challenge["t"] == "challenge", challenge
        fields = dict(item.split("=", 1) for item in challenge["data"].split(","))
        scram.set_server_first(challenge["data"])
        connection.send({"t": "authenticate", "data": scram.get_client_final()})
        answers.append((len(fields["s"]), fields["i"], await connection.rest()))
    (known_salt, known_iterations, known_error), (fake_salt, fake_iterations, fake_error) = answers
    assert known_salt == fake_salt, \
        f"the salt of a user is {known_salt} base64 characters, of a name that is no user " \
        f"{fake_salt}: the challenge tells which names exist"
    assert known_iterations == fake_iterations
    assert known_error == fake_error
    (error,) = frames(known_error)
    assert is_error(error, ErrorCode.AUTH_FAILED), error


async def test_a_hello_without_credentials_gets_auth_required(
        secure_broker: SecureBroker, raw: RawConnections) -> None:
    broker = await secure_broker(USERS)
    error, _ = await refused(url_of(broker.port))
    assert error.code == ErrorCode.AUTH_REQUIRED
    assert "authentication" in str(error)
    connection = await raw.open(broker.port)
    connection.send({"t": "hello", "version": PROTOCOL_VERSION, "client": "old"})
    (reply,) = frames(await connection.rest())
    assert is_error(reply, ErrorCode.AUTH_REQUIRED), reply


async def test_a_client_with_credentials_refuses_a_broker_that_does_not_authenticate(
        broker: Broker) -> None:
    error, _ = await refused(url_of(broker.port, "app", SECRET))
    assert "did not authenticate" in str(error)
    assert SECRET not in str(error)


async def test_the_secret_is_in_no_log_record_exception_or_repr(
        secure_broker: SecureBroker, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker = await secure_broker(USERS)
    shown: list[str] = []
    for password in (WRONG, SECRET):
        error, _ = await refused(url_of(broker.port, "nobody", password))
        shown += [str(error), repr(error)]
    error, _ = await refused(url_of(broker.port, "app", WRONG))
    shown += [str(error), repr(error)]
    async with Client(url_of(broker.port, "app", SECRET)) as client:
        await client.add("q1", {"n": 1})
        shown += [repr(client), repr(client.connection)]
        worker = Worker("q1", lambda job: None, url=url_of(broker.port, "app", SECRET))
        shown.append(repr(worker))
    # A broker that cannot be reached: the error names the address, not the secret.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    lost = Client(url_of(port, "app", SECRET), reconnect=False, timeout=2)
    with pytest.raises(ConnectionLost) as info:
        await lost.connect()
    shown += [str(info.value), repr(info.value)]
    logged = [record.getMessage() for record in caplog.records]
    assert any("failed to log in" in line for line in logged), logged
    assert any("logged in as 'app'" in line for line in logged), logged
    for text in (*shown, *logged, caplog.text):
        assert SECRET not in text and WRONG not in text, text


# Before the login completes, nothing is answered and nothing leaks.


async def _two_queues(broker: Broker) -> tuple[int, int]:
    """Add a job to ``q1``; return its id and the id of a job that does not exist."""
    async with Client(url_of(broker.port, "root", "root-Gnu-7777")) as client:
        job_id = await client.add("q1", {"n": 1})
    return job_id, job_id + 1000


async def _replies(broker: Broker, raw: RawConnections, tag: str, before: list[Any]) -> bytes:
    """What a connection gets for ``tag`` sent after ``before`` (sent first) about a queue and
    job that exist, checked to be byte for byte what it gets about ones that do not."""
    job_id, missing = await _two_queues(broker)
    answers = []
    for queue, job in (("q1", job_id), ("nothere", missing)):
        connection = await raw.open(broker.port)
        for message in before:
            if callable(message):
                await message(connection)
            else:
                connection.send(message)
        connection.send(client_messages(queue, job, 7)[tag])
        answers.append(await connection.rest())
    assert answers[0] == answers[1], answers
    return answers[0]


TAGS = list(client_messages("q", 1, 1))


@pytest.mark.parametrize("tag", [tag for tag in TAGS if tag != "hello"])
async def test_every_message_before_hello_is_refused_alike(
        secure_broker: SecureBroker, raw: RawConnections, tag: str) -> None:
    broker = await secure_broker(USERS)
    answer = await _replies(broker, raw, tag, [])
    (error,) = frames(answer)
    req = req_of(client_messages("q", 1, 7)[tag])
    assert is_error(error, ErrorCode.HANDSHAKE_REQUIRED, req), error


@pytest.mark.parametrize("tag", TAGS)
async def test_every_message_after_a_hello_without_credentials_is_refused_alike(
        secure_broker: SecureBroker, raw: RawConnections, tag: str) -> None:
    broker = await secure_broker(USERS)
    hello = {"t": "hello", "version": PROTOCOL_VERSION, "client": "old"}
    answer = await _replies(broker, raw, tag, [hello])
    (error,) = frames(answer)
    assert is_error(error, ErrorCode.AUTH_REQUIRED), error


@pytest.mark.parametrize("tag", [tag for tag in TAGS if tag != "authenticate"])
async def test_every_message_but_authenticate_during_the_challenge_is_refused_alike(
        secure_broker: SecureBroker, raw: RawConnections, tag: str) -> None:
    broker = await secure_broker(USERS)

    async def challenged(connection: Raw) -> None:
        connection.send({"t": "hello", "version": PROTOCOL_VERSION, "mechanism": MECHANISM,
                         "auth": "n,,n=app,r=fyko+d2lbbFgONRv9qkxdawL"})
        challenge = await connection.receive()
        assert challenge["t"] == "challenge", challenge

    answer = await _replies(broker, raw, tag, [challenged])
    (error,) = frames(answer)
    req = req_of(client_messages("q", 1, 7)[tag])
    assert is_error(error, ErrorCode.AUTH_REQUIRED, req), error


# Guessing.


async def test_past_the_burst_an_address_is_refused_but_others_go_on(
        secure_broker: SecureBroker, raw: RawConnections) -> None:
    broker = await secure_broker(USERS)
    async with Client(url_of(broker.port, "app", SECRET)) as before:
        failures = await asyncio.gather(
            *(refused(url_of(broker.port, "app", f"{WRONG}-{n}")) for n in range(10)))
        assert all(error.code == ErrorCode.AUTH_FAILED for error, _ in failures)
        # The address has used up its attempts: the right secret is refused too...
        error, _ = await refused(url_of(broker.port, "app", SECRET))
        assert error.code == ErrorCode.AUTH_FAILED
        # ...while a client connected before goes on, and so does another address.
        job_id = await before.add("q1", {"n": 1})
        assert (await before.get_job(job_id)) is not None
        other = await raw.login(broker.port, "app", SECRET, source="127.0.0.2")
        other.send({"t": "get_counts", "req": 1, "queue": "q1"})
        counts = await other.receive()
        assert counts["t"] == "counts" and counts["waiting"] == 1, counts


async def _add_latencies(client: Client, count: int | None = None,
                         until: asyncio.Future[Any] | None = None) -> list[float]:
    """Seconds each of ``count`` adds took (or of as many as ``until`` leaves time for)."""
    latencies: list[float] = []
    while (count is not None and len(latencies) < count) or (until is not None
                                                             and not until.done()):
        started = time.perf_counter()
        await client.add("q1", {"n": len(latencies)})
        latencies.append(time.perf_counter() - started)
    return latencies


async def test_a_thousand_wrong_secrets_do_not_slow_another_client(
        users_path: Path, broker_process: StartBroker, raw: RawConnections) -> None:
    write_users(users_path, USERS)
    broker = broker_process(*SECURITY_BROKER, str(users_path), "0.02")
    attempts, concurrency = 1000, 50
    async with Client(url_of(broker.port, "app", SECRET)) as client:
        await _add_latencies(client, 50)
        before = statistics.median(await _add_latencies(client, 200))
        outcomes: list[BaseException | None] = []
        slots = asyncio.Semaphore(concurrency)

        async def guess(n: int) -> None:
            async with slots:
                guesser = Client(url_of(broker.port, "app", f"{WRONG}-{n}"), reconnect=False)
                try:
                    await guesser.connect()
                    outcomes.append(None)
                except AuthenticationFailed as exc:
                    outcomes.append(exc)
                finally:
                    await guesser.close()

        attack = asyncio.ensure_future(asyncio.gather(*(guess(n) for n in range(attempts))))
        during_all = await _add_latencies(client, until=attack)
        await attack
        during = statistics.median(during_all)
        print(f"\nadd latency, median: {before * 1000:.2f} ms before, {during * 1000:.2f} ms "
              f"during {attempts} wrong logins ({len(during_all)} adds)")
        assert len(outcomes) == attempts
        assert all(isinstance(outcome, AuthenticationFailed) for outcome in outcomes)
        assert len(during_all) >= 20
        assert during < 5 * before + 0.020, (before, during)
        # The broker still serves: the client connected before, and another address.
        assert (await client.counts("q1"))["waiting"] == 250 + len(during_all)
    other = await raw.login(broker.port, "app", SECRET, source="127.0.0.2")
    other.send({"t": "get_queues", "req": 1})
    queues = await other.receive()
    assert queues["t"] == "queues" and [q["name"] for q in queues["queues"]] == ["q1"], queues
    await eventually(lambda: "is refused for a while" in broker.log, "the broker logs the block")
