"""The users file: permissions by queue glob, SCRAM secrets, strict loading, atomic writing."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scramp import ScramClient, ScramException, ScramMechanism

from conveyor.broker import Permission, User, Users, UsersError, make_secret, write_users

PASSWORD = "correct horse battery staple"
SECRET = make_secret(PASSWORD)
"""One verifier for every test that does not check the password (each costs 4096 rounds)."""


def user(name: str = "app", *, secret: str | None = SECRET, certificate: bool = False,
         **rules: tuple[str, ...]) -> User:
    return User(name=name, secret=secret, certificate=certificate,
                rules={Permission(key): globs for key, globs in rules.items()})


def scram_login(users: Users, name: str, password: str) -> bool:
    """A whole SCRAM-SHA-256 exchange between scramp's client and server, the server reading
    ``users``; True when both sides accept it."""
    def auth_fn(username: str) -> tuple[bytes, bytes, bytes, int] | None:
        found = users.get(username)
        return None if found is None else found.scram()

    server = ScramMechanism("SCRAM-SHA-256").make_server(auth_fn)
    client = ScramClient(["SCRAM-SHA-256"], name, password)
    try:
        server.set_client_first(client.get_client_first())
        client.set_server_first(server.get_server_first())
        server.set_client_final(client.get_client_final())
        client.set_server_final(server.get_server_final())
    except ScramException:
        return False
    return True


@pytest.fixture
def umask() -> Iterator[None]:
    """A umask that would leave a new file readable by everyone."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# Permissions.


def test_a_glob_matches_queue_names_and_nothing_else() -> None:
    app = user(produce=("a*", "reports.daily"), read=("*",))
    assert app.may(Permission.PRODUCE, "a1")
    assert app.may(Permission.PRODUCE, "a")
    assert app.may(Permission.PRODUCE, "reports.daily")
    assert not app.may(Permission.PRODUCE, "b")
    assert not app.may(Permission.PRODUCE, "ba")
    assert not app.may(Permission.PRODUCE, "A1")  # case matters, on every platform
    assert not app.may(Permission.PRODUCE, "reports.weekly")
    assert app.may(Permission.READ, "anything at all")
    assert not app.may(Permission.CONSUME, "a1")
    assert not app.may(Permission.ADMIN, "a1")


def test_may_any_tells_whether_a_user_may_see_a_queue() -> None:
    worker = user("mailer", consume=("emails",))
    assert worker.may_any("emails")
    assert not worker.may_any("payroll")
    assert not user("nobody").may_any("emails")


# Secrets.


def test_a_secret_authenticates_its_password_over_scram_and_no_other() -> None:
    users = Users({"app": user()})
    assert scram_login(users, "app", PASSWORD)
    assert not scram_login(users, "app", PASSWORD + "!")
    assert not scram_login(users, "app", "")
    assert not scram_login(users, "someone", PASSWORD)


def test_a_secret_is_a_salted_verifier_never_the_password() -> None:
    again = make_secret(PASSWORD)
    assert again != SECRET  # a new salt each time
    assert PASSWORD not in SECRET
    head, _, keys = SECRET.rpartition("$")
    assert head.startswith("SCRAM-SHA-256$4096:") and ":" in keys
    salt, stored_key, server_key, iterations = user(secret=again).scram()
    assert (len(salt), len(stored_key), len(server_key), iterations) == (32, 32, 32, 4096)
    slow = make_secret(PASSWORD, iterations=5000)
    assert slow.startswith("SCRAM-SHA-256$5000:")
    assert scram_login(Users({"app": user(secret=slow)}), "app", PASSWORD)


@pytest.mark.parametrize(("password", "iterations", "words"), [
    ("", 4096, "the password is empty"),
    ("bell\x07", 4096, "cannot be used with SCRAM"),
    ("fine", 1000, "iterations must be an integer from 4096"),
    ("fine", 10_000_001, "iterations must be an integer from 4096"),
])
def test_make_secret_refuses_what_scram_cannot_use(password: str, iterations: int,
                                                    words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        make_secret(password, iterations=iterations)
    if password:
        assert password not in str(caught.value)


def test_a_certificate_user_has_no_scram_verifier() -> None:
    ops = user("ops", secret=None, certificate=True)
    with pytest.raises(ValueError, match="user 'ops' has no secret"):
        ops.scram()
    assert "secret" not in repr(ops) and SECRET not in repr(user())


def test_typical_shape_is_the_most_common_salt_length_and_iteration_count() -> None:
    slow = make_secret(PASSWORD, iterations=5000)
    users = Users({"a": user("a", secret=slow), "b": user("b", secret=slow),
                   "c": user("c"), "d": user("d", secret=None, certificate=True)})
    assert users.typical_shape == (32, 5000)
    # Without a secret in the file: the shape of a new secret.
    assert Users({"d": user("d", secret=None, certificate=True)}).typical_shape == (32, 4096)


# Loading.


def test_load_reads_every_key(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text(f"""# a comment
[users.app]
secret = "{SECRET}"
produce = ["emails", "reports.*"]
read = ["emails"]

[users.mailer]
secret = "{SECRET}"
consume = ["emails"]

[users."ops@eu"]
certificate = true
admin = ["*"]
read = ["*"]
""")
    users = Users.load(path)
    assert list(users.users) == ["app", "mailer", "ops@eu"]
    app = users.get("app")
    assert app is not None and app.secret == SECRET and not app.certificate
    assert app.rules[Permission.PRODUCE] == ("emails", "reports.*")
    assert app.rules[Permission.CONSUME] == ()
    ops = users.get("ops@eu")
    assert ops is not None and ops.certificate and ops.secret is None
    assert ops.may(Permission.ADMIN, "emails")
    assert users.get("nobody") is None
    empty = tmp_path / "empty.toml"
    empty.write_text("# nobody yet\n")
    assert Users.load(empty).users == {}


BAD_FILES = [
    ("[users.app\n", "not valid TOML: "),
    ("[users]\napp = 3\n", "user 'app': must be a table"),
    ("users = 3\n", "'users' must be a table"),
    ("[server]\nport = 1\n", "unknown key 'server' at the top level"),
    (f'[users.app]\nsecret = "{SECRET}"\nwrite = ["a"]\n', "user 'app': unknown key 'write'"),
    (f'[users."a b"]\nsecret = "{SECRET}"\n', "user 'a b': a user name is 1 to 64"),
    (f'[users.{"x" * 65}]\nsecret = "{SECRET}"\n', "a user name is 1 to 64"),
    (f'[users.""]\nsecret = "{SECRET}"\n', "user '': a user name is 1 to 64"),
    ('[users.app]\nproduce = ["a"]\n', "user 'app': no way to log in"),
    ('[users.app]\ncertificate = false\n', "user 'app': no way to log in"),
    ('[users.app]\nsecret = "hunter2"\n', "user 'app': secret is not a SCRAM-SHA-256 verifier"),
    ('[users.app]\nsecret = ""\n', "user 'app': secret is not a SCRAM-SHA-256 verifier"),
    (f'[users.app]\nsecret = "{SECRET.replace("4096", "1000", 1)}"\n',
     "secret is not a SCRAM-SHA-256 verifier"),
    (f'[users.app]\nsecret = "{SECRET[:-8]}"\n', "secret is not a SCRAM-SHA-256 verifier"),
    (f'[users.app]\nsecret = "{SECRET.replace("SHA-256", "SHA-1")}"\n',
     "secret is not a SCRAM-SHA-256 verifier"),
    ("[users.app]\nsecret = 42\n", "user 'app': secret must be a string, not an integer"),
    ('[users.app]\ncertificate = "yes"\n', "user 'app': certificate must be true or false"),
    (f'[users.app]\nsecret = "{SECRET}"\nproduce = "emails"\n',
     "user 'app': produce must be a list of queue-name globs, not a string"),
    (f'[users.app]\nsecret = "{SECRET}"\nconsume = [1]\n',
     "user 'app': consume holds an integer; a queue-name glob is a string"),
    (f'[users.app]\nsecret = "{SECRET}"\nread = ["a", ""]\n',
     "user 'app': read holds an empty glob"),
    (b"[users.app]\nsecret = \"\xff\"\n", "not UTF-8 text"),
]


@pytest.mark.parametrize(("content", "words"), BAD_FILES, ids=[w for _, w in BAD_FILES])
def test_every_problem_is_one_line_naming_the_file_and_the_user(
        tmp_path: Path, content: str | bytes, words: str) -> None:
    path = tmp_path / "users.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UsersError) as caught:
        Users.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message, message
    assert "\n" not in message
    # Not a secret, nor anything typed where a secret goes.
    for leaked in ("hunter2", SECRET, SECRET[:-8], SECRET.split("$")[2]):
        assert leaked not in message


def test_a_missing_file_is_one_line_too(tmp_path: Path) -> None:
    with pytest.raises(UsersError, match=r"missing\.toml: cannot read the users file: No such"):
        Users.load(tmp_path / "missing.toml")


# Writing.


def test_write_users_writes_mode_0600_whatever_the_umask(tmp_path: Path, umask: None) -> None:
    path = tmp_path / "users.toml"
    path.write_text("old")
    path.chmod(0o644)
    write_users(path, Users({"app": user(produce=("a*",))}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Users.load(path).get("app") == user(produce=("a*",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.toml"]  # no temporary left
    text = path.read_text()
    assert text.startswith("# conveyor users file: edit with `conveyor user add")
    assert PASSWORD not in text


def test_write_users_replaces_a_link_s_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    target = tmp_path / "etc" / "users.toml"
    target.write_text("")
    link = tmp_path / "users.toml"
    link.symlink_to(target)
    write_users(link, Users({"app": user()}))
    assert link.is_symlink() and list(Users.load(target).users) == ["app"]


@pytest.mark.parametrize(("bad", "words"), [
    (user("a b"), "user 'a b': a user name is"),
    (user(read=("",)), "user 'app': read holds an empty glob"),
    (user(secret="hunter2"), "user 'app': secret is not a SCRAM-SHA-256 verifier"),
    (user(secret=None), "user 'app': no way to log in"),
])
def test_write_users_refuses_what_would_not_load_and_keeps_the_file(
        tmp_path: Path, bad: User, words: str) -> None:
    path = tmp_path / "users.toml"
    write_users(path, Users({"ops": user("ops")}))
    before = path.read_bytes()
    with pytest.raises(UsersError, match=words) as caught:
        write_users(path, Users({bad.name: bad}))
    assert "hunter2" not in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.toml"]


def test_write_users_reports_a_directory_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(UsersError, match="cannot write the users file: No such file"):
        write_users(tmp_path / "missing" / "users.toml", Users({"app": user()}))
    with pytest.raises(UsersError, match="filed under the name 'other'"):
        write_users(tmp_path / "users.toml", Users({"other": user()}))


names = st.from_regex(r"[A-Za-z0-9_.@-]{1,64}", fullmatch=True)
globs = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20)
rules = st.dictionaries(st.sampled_from(list(Permission)),
                        st.lists(globs, max_size=4).map(tuple))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(names, st.booleans(), st.booleans(), rules), max_size=5,
                unique_by=lambda row: row[0]))
def test_any_users_survive_a_round_trip_through_the_file(
        tmp_path: Path, rows: list[tuple[str, bool, bool, dict[Permission, tuple[str, ...]]]],
) -> None:
    # Quotes, backslashes, control characters, '#', '=' and any Unicode in the globs; dots and
    # '@' in the names (quoted keys).
    users = Users({name: User(name=name, secret=SECRET if has_secret or not certificate else None,
                              certificate=certificate, rules=globs_of)
                   for name, has_secret, certificate, globs_of in rows})
    path = tmp_path / "users.toml"
    write_users(path, users)
    assert Users.load(path) == users
    assert list(Users.load(path).users) == [row[0] for row in rows]
