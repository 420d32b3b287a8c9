"""Broker URLs: every accepted form, every refused one, and a secret that never shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.client import BrokerAddress, Client, ConnectionLost, parse_url

SECRET = "s3cr%t:p@ss/word"
"""A secret with every character a URL has to escape (percent-encoded below)."""
SECRET_IN_URL = "s3cr%25t%3Ap%40ss%2Fword"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_URL", raising=False)
    monkeypatch.delenv("CONVEYOR_PASSWORD_FILE", raising=False)


@pytest.mark.parametrize(("url", "expected"), [
    ("127.0.0.1:7400", BrokerAddress("127.0.0.1", 7400)),
    ("tcp://broker.example:81", BrokerAddress("broker.example", 81)),
    ("[::1]:7401", BrokerAddress("::1", 7401)),
    ("tcp://[fd00::2]:7401", BrokerAddress("fd00::2", 7401)),
    ("conveyor://broker.example", BrokerAddress("broker.example", 7400)),
    ("conveyor://broker.example:7500/", BrokerAddress("broker.example", 7500)),
    ("conveyors://broker.example", BrokerAddress("broker.example", 7400, tls=True)),
    ("CONVEYORS://[::1]/", BrokerAddress("::1", 7400, tls=True)),
    ("conveyors://[::1]:9000", BrokerAddress("::1", 9000, tls=True)),
    ("conveyor://app@h", BrokerAddress("h", 7400, user="app")),
    ("conveyor://app:pw@h:1/", BrokerAddress("h", 1, user="app", secret="pw")),
    (f"conveyors://a%40b.c:{SECRET_IN_URL}@[::1]:2",
     BrokerAddress("::1", 2, tls=True, user="a@b.c", secret=SECRET)),
    ("conveyor://app:@h", BrokerAddress("h", 7400, user="app", secret="")),
])
def test_every_accepted_form_reads_as_its_address(url: str, expected: BrokerAddress) -> None:
    address = parse_url(url)
    assert address == expected
    assert address.secret == expected.secret


@pytest.mark.parametrize(("url", "words"), [
    ("localhost", "HOST:PORT"),
    ("tcp://h", "HOST:PORT"),
    ("h:0", "HOST:PORT"),
    ("h:65536", "HOST:PORT"),
    ("h:port", "HOST:PORT"),
    (":7400", "HOST:PORT"),
    ("conveyor://h:x", "conveyor://[USER@]HOST[:PORT]"),
    ("conveyor://h:7400/queues", "conveyor://[USER@]HOST[:PORT]"),
    ("conveyor://[::1", "conveyor://[USER@]HOST[:PORT]"),
    ("conveyor://", "conveyor://[USER@]HOST[:PORT]"),
    ("conveyor://:pw@h", "empty user name"),
    ("http://h:80", "unsupported broker address 'http://h:80'"),
    ("app:pw@h:7400", "needs a conveyor:// or conveyors:// URL"),
])
def test_an_address_that_cannot_be_read_is_a_value_error_saying_why(url: str,
                                                                     words: str) -> None:
    with pytest.raises(ValueError, match="broker address") as caught:
        parse_url(url)
    assert words in str(caught.value)


def test_the_address_comes_from_conveyor_url_else_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_url() == BrokerAddress("127.0.0.1", 7400)
    monkeypatch.setenv("CONVEYOR_URL", "conveyors://ops@broker.example")
    assert parse_url() == BrokerAddress("broker.example", 7400, tls=True, user="ops")
    assert parse_url("h:1") == BrokerAddress("h", 1)


def test_str_shows_the_url_without_the_secret_and_reads_back() -> None:
    cases = {
        f"conveyors://app:{SECRET_IN_URL}@broker.example:7400/": "conveyors://app@broker.example:7400",
        "conveyor://a%40b:pw@[::1]": "conveyor://a%40b@[::1]:7400",
        "conveyors://h": "conveyors://h:7400",
        "tcp://h:9": "h:9",
        "[::1]:9": "[::1]:9",
    }
    for url, shown in cases.items():
        address = parse_url(url)
        assert str(address) == shown
        read_back = parse_url(shown)
        assert (read_back.host, read_back.port, read_back.tls, read_back.user) == (
            address.host, address.port, address.tls, address.user)


def test_the_secret_is_in_no_repr_str_or_error(tmp_path: Path) -> None:
    address = parse_url(f"conveyors://app:{SECRET_IN_URL}@broker.example:7400")
    assert address.secret == SECRET
    for text in (repr(address), str(address), f"{address}", repr([address])):
        assert SECRET not in text and SECRET_IN_URL not in text
        assert "app" in text
    for url in (f"http://app:{SECRET_IN_URL}@h:1", f"conveyor://app:{SECRET_IN_URL}@h:x",
                f"conveyor://app:{SECRET_IN_URL}@h/path", f"tcp://app:{SECRET_IN_URL}@h:1"):
        with pytest.raises(ValueError) as caught:
            parse_url(url)
        message = str(caught.value)
        assert SECRET_IN_URL not in message and SECRET not in message, message
        assert "app:***@" in message, message
        assert caught.value.__cause__ is None and caught.value.__context__ is None


async def test_a_connection_error_names_the_address_but_not_the_secret() -> None:
    with pytest.raises(ConnectionLost) as caught:
        async with Client(f"conveyor://app:{SECRET_IN_URL}@127.0.0.1:1", timeout=2,
                          reconnect=False):
            pass
    message = str(caught.value)
    assert "conveyor://app@127.0.0.1:1" in message, message
    assert SECRET_IN_URL not in message and SECRET not in message


def test_a_user_without_a_secret_takes_it_from_conveyor_password_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_url("conveyor://app@h").secret is None
    secret_file = tmp_path / "secret"
    secret_file.write_text("from the file\n")
    monkeypatch.setenv("CONVEYOR_PASSWORD_FILE", str(secret_file))
    assert parse_url("conveyor://app@h").secret == "from the file"
    # A secret in the URL wins; an address with no user reads no file.
    assert parse_url("conveyor://app:pw@h").secret == "pw"
    assert parse_url("h:1").secret is None
    assert "from the file" not in repr(parse_url("conveyor://app@h"))


def test_an_unreadable_password_file_is_an_error_naming_the_file_not_its_content(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    monkeypatch.setenv("CONVEYOR_PASSWORD_FILE", str(missing))
    with pytest.raises(ValueError, match="cannot read the secret file") as caught:
        parse_url("conveyor://app@h")
    assert str(missing) in str(caught.value)
    assert "CONVEYOR_PASSWORD_FILE" in str(caught.value)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xffnot-text-secret")
    monkeypatch.setenv("CONVEYOR_PASSWORD_FILE", str(binary))
    with pytest.raises(ValueError, match="not UTF-8") as caught:
        parse_url("conveyor://app@h")
    assert "not-text-secret" not in str(caught.value)
    assert str(binary) in str(caught.value)
