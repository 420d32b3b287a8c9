"""``conveyor user``: editing the users file from the command line, as a user does (each command
a child process)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cli_support import COMMAND_TIMEOUT, Pty, Result, argv, command_env, conveyor
from scramp import ScramClient, ScramException, ScramMechanism

from conveyor.broker import Permission, User, Users, make_secret, write_users

PASSWORD = "s3cret-Pässword"
APPLY = "send SIGHUP to the broker (or restart it) to apply"


def logs_in(path: Path, name: str, password: str) -> bool:
    """Whether ``name`` with ``password`` passes a SCRAM-SHA-256 exchange against the file."""
    users = Users.load(path)

    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int] | None:
        found = users.get(username)
        return None if found is None else found.scram()

    server = ScramMechanism().make_server(auth_fn)
    client = ScramClient(["SCRAM-SHA-256"], name, password)
    try:
        server.set_client_first(client.get_client_first())
        client.set_server_first(server.get_server_first())
        server.set_client_final(client.get_client_final())
        client.set_server_final(server.get_server_final())
    except ScramException:
        return False
    return True


def assert_private(path: Path, *secrets: str) -> None:
    """The file is mode 0600 and holds none of ``secrets`` in clear."""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for secret in secrets:
        assert secret not in text


async def user(path: Path, *args: str, stdin: bytes | None = None,
               env: dict[str, str] | None = None) -> Result:
    """``conveyor user ARGS --users PATH``."""
    return await conveyor("user", *args, "--users", str(path), stdin=stdin, env=env)


async def test_add_stores_a_verifier_that_logs_in_never_the_password(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    added = await user(path, "add", "app", "--permission", "produce:emails",
                       "--permission", "produce:reports.*", "--permission", "read:emails",
                       "--password-stdin", stdin=PASSWORD.encode() + b"\n")
    assert added.ok().stdout == (f"added user 'app' to {path} (login: password; produce emails, "
                                 f"reports.*; read emails); {APPLY}\n")
    assert_private(path, PASSWORD)
    assert logs_in(path, "app", PASSWORD)
    assert not logs_in(path, "app", PASSWORD.upper())
    app = Users.load(path).get("app")
    assert app is not None and not app.certificate
    assert app.rules[Permission.PRODUCE] == ("emails", "reports.*")
    assert app.may(Permission.READ, "emails") and not app.may(Permission.CONSUME, "emails")
    # A pipe on standard input is read without --password-stdin; a file with --password-file.
    (tmp_path / "password").write_text("from a file\n")
    piped, from_file = await asyncio.gather(
        user(path, "add", "mailer", "--permission", "consume:emails", stdin=b"piped\r\n"),
        user(path.with_name("other.toml"), "add", "ops", "--password-file",
             str(tmp_path / "password")))
    piped.ok()
    from_file.ok()
    assert logs_in(path, "mailer", "piped") and logs_in(path, "app", PASSWORD)
    assert logs_in(path.with_name("other.toml"), "ops", "from a file")
    for result in (added, piped, from_file):
        assert PASSWORD not in result.stdout + result.stderr


async def test_a_certificate_user_needs_no_password(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    added = await user(path, "add", "ops.eu", "--certificate", "--no-secret",
                       "--permission", "admin:*", "--json")
    assert added.returncode == 0 and added.stderr == f"conveyor: {APPLY}\n", added
    assert added.json() == {"user": "ops.eu", "added": True, "file": str(path),
                            "password": False, "certificate": True,
                            "permissions": {"admin": ["*"]}}
    ops = Users.load(path).get("ops.eu")
    assert ops is not None and ops.certificate and ops.secret is None
    assert ops.may(Permission.ADMIN, "anything")


async def test_passwd_replaces_the_password_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    await user(path, "add", "app", "--certificate", "--permission", "produce:a*",
               stdin=b"old password\n")
    changed = await user(path, "passwd", "app", stdin=b"new password\n")
    assert changed.ok().stdout == f"changed the password of user 'app' in {path}; {APPLY}\n"
    assert logs_in(path, "app", "new password") and not logs_in(path, "app", "old password")
    app = Users.load(path).get("app")
    assert app is not None and app.certificate and app.rules[Permission.PRODUCE] == ("a*",)
    assert_private(path, "new password", "old password")


async def test_remove_list_grant_and_revoke(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    secret = make_secret(PASSWORD)
    write_users(path, Users({
        "app": User(name="app", secret=secret, certificate=False,
                    rules={Permission.PRODUCE: ("emails",)}),
        "ops": User(name="ops", secret=None, certificate=True,
                    rules={Permission.ADMIN: ("*",), Permission.READ: ("jobs.[ab]",)}),
    }))
    listed, as_json = await asyncio.gather(user(path, "list"), user(path, "list", "--json"))
    table = listed.ok().stdout
    assert f"users in {path}" in table
    assert "app    password      emails" in table
    assert "jobs.[ab]" in table  # a glob is not taken for rich markup
    assert as_json.ok().json() == [
        {"name": "app", "password": True, "certificate": False, "produce": ["emails"],
         "consume": [], "read": [], "admin": []},
        {"name": "ops", "password": False, "certificate": True, "produce": [], "consume": [],
         "read": ["jobs.[ab]"], "admin": ["*"]}]
    assert secret not in table + as_json.stdout and secret.split("$")[2] not in table

    granted = await user(path, "grant", "app", "--permission", "consume:emails",
                         "--permission", "produce:emails", "--permission", "produce:sms")
    assert granted.ok().stdout == (f"granted user 'app' consume emails; produce sms in {path}; "
                                   f"{APPLY}\n")
    app = Users.load(path).get("app")
    assert app is not None and app.secret == secret
    assert app.rules[Permission.PRODUCE] == ("emails", "sms")
    assert app.rules[Permission.CONSUME] == ("emails",)

    revoked = await user(path, "revoke", "app", "--permission", "produce:emails")
    assert revoked.ok().stdout == f"revoked produce emails from user 'app' in {path}; {APPLY}\n"
    app = Users.load(path).get("app")
    assert app is not None and not app.may(Permission.PRODUCE, "emails")
    assert app.may(Permission.PRODUCE, "sms")

    removed = await user(path, "remove", "ops")
    assert removed.ok().stdout == f"removed user 'ops' from {path}; {APPLY}\n"
    assert list(Users.load(path).users) == ["app"]
    assert_private(path)
    assert logs_in(path, "app", PASSWORD)


async def test_mistakes_are_one_line_and_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    await user(path, "add", "app", "--permission", "produce:a", stdin=b"pw\n")
    before = path.read_bytes()
    cases: list[tuple[list[str], bytes | None, int, str]] = [
        (["add", "app"], b"pw\n", 1, "user 'app' exists; use passwd/grant"),
        (["passwd", "nobody"], b"pw\n", 1, f"no user 'nobody' in {path}"),
        (["remove", "nobody"], None, 1, f"no user 'nobody' in {path}"),
        (["grant", "app", "--permission", "produce:a"], None, 1,
         "user 'app' already holds produce a; nothing changed"),
        (["revoke", "app", "--permission", "read:a"], None, 1,
         "user 'app' holds no read on 'a'; nothing changed"),
        (["add", "bob", "--permission", "write:a"], b"pw\n", 2,
         "argument --permission: expected PERM:GLOB"),
        (["add", "bob", "--permission", "produce:"], b"pw\n", 2,
         "argument --permission: expected PERM:GLOB"),
        (["add", "bob", "--permission", "produce"], b"pw\n", 2,
         "argument --permission: expected PERM:GLOB"),
        (["add", "b b"], b"pw\n", 2, "argument NAME: a user name is 1 to 64 of"),
        (["add", "bob", "--no-secret"], None, 2, "--no-secret leaves the user no way to log in"),
        (["add", "bob"], b"\n", 2, "no password on standard input"),
        (["add", "bob"], b"", 2, "no password on standard input"),
        (["add", "bob"], b"bell\x07\n", 2, "the password cannot be used with SCRAM"),
        (["passwd", "app", "--password-file", str(tmp_path / "none")], None, 2,
         "cannot read the password file"),
        (["grant", "app"], None, 2, "the following arguments are required: --permission"),
    ]
    results = await asyncio.gather(*(user(path, *args, stdin=stdin)
                                     for args, stdin, _, _ in cases))
    for (args, _, status, words), result in zip(cases, results, strict=True):
        assert result.returncode == status, (args, result)
        assert words in result.error_line(), (args, result)
        assert result.stdout == "", args
    assert path.read_bytes() == before
    missing = await user(tmp_path / "none.toml", "list")
    assert missing.returncode == 1
    assert missing.error_line() == (f"conveyor: {tmp_path / 'none.toml'}: cannot read the users "
                                    f"file: No such file or directory")


async def test_a_broken_users_file_is_reported_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text('[users.app]\nsecret = "hunter2"\n')
    results = await asyncio.gather(user(path, "list"), user(path, "add", "bob", stdin=b"pw\n"))
    for result in results:
        assert result.returncode == 1, result
        assert result.error_line() == (f"conveyor: {path}: user 'app': secret is not a "
                                       f"SCRAM-SHA-256 verifier (set one with 'conveyor user "
                                       f"passwd app')")
    assert path.read_text() == '[users.app]\nsecret = "hunter2"\n'


async def test_the_file_comes_from_users_or_conveyor_users_else_the_working_directory(
        tmp_path: Path) -> None:
    from_env = tmp_path / "env.toml"
    by_option = tmp_path / "option.toml"
    env = command_env({"CONVEYOR_USERS": str(from_env)})
    runs = [
        subprocess.run(argv(["user", "add", "a"], None), cwd=tmp_path, env=command_env(),
                       input=b"pw\n", capture_output=True, timeout=COMMAND_TIMEOUT),
        subprocess.run(argv(["user", "add", "b"], None), cwd=tmp_path, env=env,
                       input=b"pw\n", capture_output=True, timeout=COMMAND_TIMEOUT),
        subprocess.run(argv(["user", "add", "c", "--users", str(by_option)], None),
                       cwd=tmp_path, env=env, input=b"pw\n", capture_output=True,
                       timeout=COMMAND_TIMEOUT),
    ]
    assert [run.returncode for run in runs] == [0, 0, 0], runs
    assert list(Users.load(tmp_path / "conveyor-users.toml").users) == ["a"]
    assert list(Users.load(from_env).users) == ["b"]
    assert list(Users.load(by_option).users) == ["c"]


async def _prompted(tmp_path: Path, answers: list[bytes]) -> tuple[int, bytes]:
    """``conveyor user add app`` on a terminal, answering each prompt in turn; its exit status
    and everything the terminal showed."""
    terminal = Pty()
    try:
        # A new session: no controlling terminal to open, so getpass asks on the given one.
        process = await asyncio.create_subprocess_exec(
            *argv(["user", "add", "app", "--users", str(tmp_path / "users.toml")], None),
            cwd=tmp_path, env=command_env(), stdin=terminal.slave, stdout=subprocess.PIPE,
            stderr=terminal.slave, start_new_session=True)
        for prompt, answer in zip((b"Password for app: ", b"Same password again: "), answers,
                                  strict=False):
            await terminal.read_until(prompt)
            terminal.write(answer)
        out, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT)
        terminal.drain()
        assert process.returncode is not None
        return process.returncode, terminal.output + out
    finally:
        terminal.close()


@pytest.mark.skipif(not os.path.exists("/dev/ptmx"), reason="needs a pseudo-terminal")
async def test_on_a_terminal_the_password_is_asked_twice_without_echo(tmp_path: Path) -> None:
    status, shown = await _prompted(tmp_path, [b"typed secret\n", b"typed secret\n"])
    assert status == 0, shown
    assert b"typed secret" not in shown
    assert b"added user 'app'" in shown
    assert logs_in(tmp_path / "users.toml", "app", "typed secret")
    (tmp_path / "users.toml").unlink()
    status, shown = await _prompted(tmp_path, [b"typed secret\n", b"typo secret\n"])
    assert status == 2 and b"conveyor: the two passwords differ; nothing changed" in shown
    assert not (tmp_path / "users.toml").exists()


async def test_help_lists_the_user_actions() -> None:
    top, actions, add = await asyncio.gather(conveyor("--help"), conveyor("user", "--help"),
                                             conveyor("user", "add", "--help"))
    assert "\n    user " in top.ok().stdout
    for action in ("add", "passwd", "remove", "list", "grant", "revoke"):
        assert f"\n    {action} " in actions.ok().stdout, action
    for option in ("--permission PERM:GLOB", "--certificate", "--no-secret", "--password-stdin",
                   "--password-file PATH", "--users PATH", "--json"):
        assert option in add.ok().stdout, option
