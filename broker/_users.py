"""The users file: who may log in, how, and what each user may do to which queues.

A TOML file with one ``[users.NAME]`` table per user::

    [users.app]
    secret = "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>"
    produce = ["emails", "reports.*"]
    read = ["emails"]

``secret`` is a SCRAM-SHA-256 verifier in PostgreSQL's format (base64 fields), never the password
itself; ``certificate = true`` lets a client certificate whose CN is the user's name log in. Each
permission key holds queue-name globs (``fnmatch.fnmatchcase``: ``*`` matches everything).

``Users.load`` validates the whole file and reports the first problem as one ``UsersError`` line
naming the file and the user; the text of a secret is never part of an error. ``write_users``
replaces a file atomically, mode 0600, in the same format.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final

from scramp import ScramException, ScramMechanism

from conveyor.protocol import AUTH_MECHANISM

__all__ = ["Permission", "User", "Users", "UsersError", "make_secret", "write_users"]

DEFAULT_ITERATIONS: Final = 4096
"""PBKDF2 rounds of a new secret: RFC 7677's minimum and PostgreSQL's default."""
NEW_SALT: Final = 32
"""Bytes of salt of a new secret."""
MIN_ITERATIONS: Final = 4096
MAX_ITERATIONS: Final = 10_000_000
"""The bounds scramp accepts: fewer rounds are too cheap to guess, more a denial of service."""
MIN_SALT: Final = 12
"""Bytes of salt scramp requires at least (a new secret gets 32)."""
KEY_SIZE: Final = 32
"""Bytes of a SHA-256 StoredKey or ServerKey."""
MAX_DECIDED: Final = 4096
"""Permission decisions a user remembers (per queue name and permission) at most."""
MAX_NAME: Final = 64

_NAME: Final = re.compile(rf"[A-Za-z0-9_.@-]{{1,{MAX_NAME}}}")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_VERIFIER: Final = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[1-9][0-9]{0,8}):(?P<salt>[A-Za-z0-9+/=]+)"
    r"\$(?P<stored_key>[A-Za-z0-9+/=]+):(?P<server_key>[A-Za-z0-9+/=]+)")
_HEADER: Final = ("# conveyor users file: edit with "
                  "`conveyor user add|passwd|remove|list --users PATH`\n")


class Permission(StrEnum):
    """What a user may do to a queue; each is a key of the user's table in the users file."""

    PRODUCE = "produce"
    """Add jobs."""
    CONSUME = "consume"
    """Subscribe and settle jobs: window, ack, fail, release, progress, extend."""
    READ = "read"
    """Look at jobs and queues: get_job, wait, counts, get_jobs, get_queues, watch."""
    ADMIN = "admin"
    """Steer the queue: pause, resume, drain, clean, remove, retry_failed, promote."""


_KEYS: Final = frozenset({"secret", "certificate", *(p.value for p in Permission)})


class UsersError(Exception):
    """The users file cannot be read, is not valid, or cannot be written. The message is one
    line naming the file, the user and the problem; it never holds a secret."""


def _no_rules() -> Mapping[Permission, tuple[str, ...]]:
    return MappingProxyType({permission: () for permission in Permission})


@dataclass(frozen=True)
class User:
    """One user: how it logs in, and the queue-name globs it holds each permission on."""

    name: str
    secret: str | None = field(repr=False)
    """The SCRAM-SHA-256 verifier (``make_secret``), or None: no password login."""
    certificate: bool = False
    """True: a client certificate whose CN is ``name`` logs in as this user (mutual TLS)."""
    rules: Mapping[Permission, tuple[str, ...]] = field(default_factory=_no_rules)
    """Queue-name globs per permission (once built, every permission is a key); a permission
    given no glob is held on no queue."""
    _decided: dict[tuple[Permission, str], bool] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    """``may``'s answers so far: it is asked for every message of the user's connections."""

    def __post_init__(self) -> None:
        # Every permission present, globs as tuples, read-only: two users with the same rules
        # compare equal however they were built (by hand, or read from the file).
        rules = {permission: tuple(self.rules.get(permission, ())) for permission in Permission}
        object.__setattr__(self, "rules", MappingProxyType(rules))

    def may(self, permission: Permission, queue: str) -> bool:
        """Whether this user holds ``permission`` on the queue named ``queue``."""
        key = (permission, queue)
        allowed = self._decided.get(key)
        if allowed is None:
            allowed = any(fnmatchcase(queue, glob) for glob in self.rules[permission])
            if len(self._decided) < MAX_DECIDED:  # queue names are the client's to choose
                self._decided[key] = allowed
        return allowed

    def may_any(self, queue: str) -> bool:
        """Whether this user holds any permission on ``queue`` (so may learn that it exists)."""
        return any(self.may(permission, queue) for permission in Permission)

    def keeps_rights_of(self, old: User) -> bool:
        """Whether this user (``old`` after a reload) may still do everything ``old`` could."""
        return all(set(old.rules[permission]) <= set(self.rules[permission])
                   for permission in Permission)

    def may_log_in(self, *, by_certificate: bool) -> bool:
        """Whether this user may log in with a client certificate (``by_certificate``), or else
        with a secret."""
        return self.certificate if by_certificate else self.secret is not None

    def scram(self) -> tuple[bytes, bytes, bytes, int]:
        """(salt, StoredKey, ServerKey, iterations): what scramp's server ``auth_fn`` returns
        for this user.

        Raises:
            ValueError: the user has no secret, or it is not a SCRAM-SHA-256 verifier.
        """
        if self.secret is None:
            raise ValueError(f"user {self.name!r} has no secret")
        parsed = _parse_verifier(self.secret)
        if parsed is None:
            raise ValueError(f"the secret of user {self.name!r} is not a SCRAM-SHA-256 verifier")
        return parsed


@dataclass(frozen=True)
class Users:
    """Every user of a users file, by name (in the file's order)."""

    users: Mapping[str, User]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Users:
        """Read and validate the users file at ``path``.

        Raises:
            UsersError: the file cannot be read or is not valid; the message names the file,
                the user and the problem.
        """
        where = os.fspath(path)
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise UsersError(f"{where}: cannot read the users file: "
                             f"{exc.strerror or exc}") from None
        return _parse(data, where)

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        return self.users.get(name)

    @cached_property
    def typical_shape(self) -> tuple[int, int]:
        """The most common (salt length in bytes, iteration count) among the users' secrets;
        a new secret's when no user has one."""
        shapes = collections.Counter(
            (len(salt), iterations)
            for user in self.users.values() if user.secret is not None
            for salt, _, _, iterations in (user.scram(),))
        return shapes.most_common(1)[0][0] if shapes else (NEW_SALT, DEFAULT_ITERATIONS)


def make_secret(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> str:
    """A SCRAM-SHA-256 verifier for ``password`` with a new random salt, in PostgreSQL's format
    (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64): what a users file
    stores instead of the password.

    Raises:
        ValueError: the password is empty or holds characters SCRAM refuses (SASLprep), or
            ``iterations`` is outside 4096 to 10,000,000. The message never holds the password.
    """
    if not isinstance(password, str) or not password:
        raise ValueError("the password is empty")
    if type(iterations) is not int or not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an integer from {MIN_ITERATIONS} to "
                         f"{MAX_ITERATIONS}, got {iterations!r}")
    try:
        salt, stored_key, server_key, rounds = ScramMechanism(AUTH_MECHANISM).make_auth_info(
            password, iteration_count=iterations, salt=secrets.token_bytes(NEW_SALT))
    except ScramException as exc:
        # scramp's messages name the rule broken (SASLprep), never the password.
        raise ValueError(f"the password cannot be used with SCRAM: {exc.args[0]}") from None
    return (f"{AUTH_MECHANISM}${rounds}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}")


def write_users(path: str | os.PathLike[str], users: Users) -> None:
    """Replace the users file at ``path`` with ``users``, atomically: a reader (the broker on
    SIGHUP) sees the old file or the new one, whole, never a mix. The file's mode is 0600
    whatever the umask; a symbolic link at ``path`` is kept and its target replaced.

    Raises:
        UsersError: ``users`` would not load back (a bad name, secret or glob), or the file
            cannot be written.
    """
    where = os.fspath(path)
    for key, user in users.users.items():
        if key != user.name:
            raise UsersError(f"{where}: user {user.name!r} is filed under the name {key!r}")
    text = _render(users)
    # What is written must load back as the same users: the broker must never meet a file
    # that this function wrote and that ``Users.load`` refuses.
    if _parse(text.encode(), where) != users:
        raise UsersError(f"{where}: the users do not survive a round trip through the file")
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    temporary = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb", closefd=False) as file:
                file.write(text.encode())
                file.flush()
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
    except OSError as exc:
        _remove_quietly(temporary)
        raise UsersError(f"{where}: cannot write the users file: {exc.strerror or exc}") from None
    _fsync_directory(directory)


def _render(users: Users) -> str:
    """The users file's text for ``users`` (TOML)."""
    parts = [_HEADER]
    for user in users.users.values():
        lines = [f"\n[users.{_key(user.name)}]\n"]
        if user.secret is not None:
            lines.append(f"secret = {_string(user.secret)}\n")
        if user.certificate:
            lines.append("certificate = true\n")
        for permission in Permission:
            globs = user.rules[permission]
            if globs:
                lines.append(f"{permission.value} = [{', '.join(map(_string, globs))}]\n")
        parts.extend(lines)
    return "".join(parts)


# Reading.


def _parse(data: bytes, where: str) -> Users:
    try:
        document = tomllib.loads(data.decode())
    except UnicodeDecodeError as exc:
        raise UsersError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib says what and where ("Invalid value (at line 3, column 10)"), never the text.
        raise UsersError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"users"})
    if unknown:
        raise UsersError(f"{where}: unknown key {unknown[0]!r} at the top level (each user is "
                         f"a [users.NAME] table)")
    table = document.get("users", {})
    if not isinstance(table, dict):
        raise UsersError(f"{where}: 'users' must be a table of [users.NAME] tables")
    users = {name: _user(name, value, where) for name, value in table.items()}
    return Users(MappingProxyType(users))


def _user(name: str, value: Any, where: str) -> User:
    def problem(text: str) -> UsersError:
        return UsersError(f"{where}: user {name!r}: {text}")

    if not _NAME.fullmatch(name):
        raise problem(f"a user name is 1 to {MAX_NAME} of the characters A-Z a-z 0-9 _ . @ -")
    if not isinstance(value, dict):
        raise problem("must be a table ([users.NAME])")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise problem(f"unknown key {unknown[0]!r} (known: secret, certificate, "
                      f"{', '.join(p.value for p in Permission)})")
    secret = value.get("secret")
    if secret is not None:
        # Never the value in the message: it may be a password typed in by mistake.
        if not isinstance(secret, str):
            raise problem(f"secret must be a string, not {_kind(secret)}")
        if _parse_verifier(secret) is None:
            raise problem(f"secret is not a SCRAM-SHA-256 verifier (set one with "
                          f"'conveyor user passwd {name}')")
    certificate = value.get("certificate", False)
    if not isinstance(certificate, bool):
        raise problem(f"certificate must be true or false, not {_kind(certificate)}")
    if secret is None and not certificate:
        raise problem(f"no way to log in: give it a secret ('conveyor user passwd {name}') "
                      f"or certificate = true")
    rules: dict[Permission, tuple[str, ...]] = {}
    for permission in Permission:
        globs = value.get(permission.value, [])
        if not isinstance(globs, list):
            raise problem(f"{permission.value} must be a list of queue-name globs, not "
                          f"{_kind(globs)}")
        for glob in globs:
            if not isinstance(glob, str):
                raise problem(f"{permission.value} holds {_kind(glob)}; a queue-name glob is "
                              f"a string")
            if not glob:
                raise problem(f"{permission.value} holds an empty glob, which matches no queue")
        rules[permission] = tuple(globs)
    return User(name=name, secret=secret, certificate=certificate, rules=rules)


def _parse_verifier(secret: str) -> tuple[bytes, bytes, bytes, int] | None:
    match = _VERIFIER.fullmatch(secret)
    if match is None:
        return None
    iterations = int(match["iterations"])
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        return None
    try:
        salt, stored_key, server_key = (base64.b64decode(match[group], validate=True)
                                        for group in ("salt", "stored_key", "server_key"))
    except binascii.Error:
        return None
    if len(salt) < MIN_SALT or len(stored_key) != KEY_SIZE or len(server_key) != KEY_SIZE:
        return None
    return salt, stored_key, server_key, iterations


def _kind(value: object) -> str:
    """What a TOML value is, for a message (never the value: it might be a secret)."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a table"}
    return names.get(type(value), f"a {type(value).__name__}")


# Writing: a TOML writer for this fixed schema (strings, booleans, lists of strings).

_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                   "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    """``text`` as a TOML basic string: quotes and backslashes escaped, and every control
    character (which TOML forbids in a string) as an escape."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(name: str) -> str:
    """``name`` as a TOML key: bare when it can be, else quoted (``"ops.eu"``, ``"a@b"``)."""
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable: it lives in the directory's entries."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
