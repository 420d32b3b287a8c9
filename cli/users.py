"""``conveyor user``: add, change and remove the users of a users file, and list them.

Commands edit the file the broker reads with ``--users`` (``Users.load``); a change is written
atomically, mode 0600, and applies once the broker reloads it (SIGHUP) or restarts. A password
is never taken from the command line: it is asked twice on a terminal, else read as one line of
standard input (``--password-stdin``), or from a file (``--password-file``); the file keeps only
its SCRAM verifier.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from rich import box
from rich.table import Table
from rich.text import Text

from conveyor.broker import Permission, User, Users, UsersError, make_secret, write_users

from .output import out_console, print_json
from .runner import OK, CommandFailed, UsageError, guarded

__all__ = ["add", "grant", "list_users", "passwd", "remove", "revoke"]

DEFAULT_PATH: Final = "conveyor-users.toml"
"""The users file when neither ``--users`` nor ``$CONVEYOR_USERS`` names one."""
APPLY: Final = "send SIGHUP to the broker (or restart it) to apply"


def users_path(args: argparse.Namespace) -> str:
    """``--users``, else ``$CONVEYOR_USERS``, else ``./conveyor-users.toml``."""
    path: str | None = args.users or os.environ.get("CONVEYOR_USERS")
    return path or os.path.join(".", DEFAULT_PATH)


def _guarded(command: Callable[[argparse.Namespace], int]
             ) -> Callable[[argparse.Namespace], int]:
    """Run ``command`` as ``runner.guarded`` does: each expected failure becomes one
    ``conveyor: ...`` line and a status."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        return guarded(functools.partial(command, args))

    return run


# Reading and writing the file.


def _load(path: str, *, missing_ok: bool = False) -> Users:
    if missing_ok and not os.path.lexists(path):
        return Users({})
    try:
        return Users.load(path)
    except UsersError as exc:
        raise CommandFailed(str(exc)) from None


def _existing(users: Users, name: str, path: str) -> User:
    found = users.get(name)
    if found is None:
        raise CommandFailed(f"no user {name!r} in {path}")
    return found


def _save(path: str, users: Mapping[str, User]) -> None:
    """Write ``users`` to the file, in their order (``{**old, name: user}`` keeps a user that
    was there in its place)."""
    try:
        write_users(path, Users(users))
    except UsersError as exc:
        raise CommandFailed(str(exc)) from None


def _report(args: argparse.Namespace, record: dict[str, Any], text: str) -> int:
    if args.json:
        print_json(record)
        print(f"conveyor: {APPLY}", file=sys.stderr, flush=True)
    else:
        print(f"{text}; {APPLY}", flush=True)
    return OK


# The password.


def _read_password(args: argparse.Namespace, name: str) -> str:
    """The new password: from ``--password-file``, from standard input (``--password-stdin``,
    or when it is not a terminal), else asked twice on the terminal."""
    if args.password_file is not None:
        try:
            text = Path(args.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read the password file {args.password_file}: "
                             f"{reason}") from None
        password = text.rstrip("\r\n")
        where = f"the password file {args.password_file}"
    elif args.password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
        where = "standard input"
    else:
        try:
            password = getpass.getpass(f"Password for {name}: ")
            again = getpass.getpass("Same password again: ")
        except EOFError:
            raise UsageError("no password given") from None
        if password != again:
            raise UsageError("the two passwords differ; nothing changed")
        where = "the terminal"
    if not password:
        raise UsageError(f"no password on {where}")
    return password


def _secret(args: argparse.Namespace, name: str) -> str:
    try:
        password = _read_password(args, name)
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # Ctrl-C at a prompt, or in a typed line, leaves it unfinished
        raise
    try:
        return make_secret(password)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# Rules.


def _rules(pairs: Iterable[tuple[str, str]]) -> dict[Permission, tuple[str, ...]]:
    """``--permission PERM:GLOB`` options by permission, each glob once, in the order given."""
    rules: dict[Permission, tuple[str, ...]] = {}
    for permission_name, glob in pairs:
        permission = Permission(permission_name)
        held = rules.get(permission, ())
        if glob not in held:
            rules[permission] = (*held, glob)
    return rules


def _rules_text(rules: dict[Permission, tuple[str, ...]]) -> str:
    return "; ".join(f"{permission.value} {', '.join(globs)}"
                     for permission, globs in rules.items() if globs) or "no permissions"


def _rules_record(rules: dict[Permission, tuple[str, ...]]) -> dict[str, list[str]]:
    return {permission.value: list(globs) for permission, globs in rules.items() if globs}


# The commands.


@_guarded
def add(args: argparse.Namespace) -> int:
    """``conveyor user add NAME [--permission PERM:GLOB ...] [--certificate] [--no-secret]``."""
    path = users_path(args)
    if args.no_secret and not args.certificate:
        raise UsageError("--no-secret leaves the user no way to log in: add --certificate")
    if args.no_secret and (args.password_stdin or args.password_file is not None):
        raise UsageError("--no-secret takes no password")
    users = _load(path, missing_ok=True)
    if users.get(args.name) is not None:
        raise CommandFailed(f"user {args.name!r} exists; use passwd/grant")
    secret = None if args.no_secret else _secret(args, args.name)
    rules = _rules(args.permission or ())
    _save(path, {**users.users, args.name: User(name=args.name, secret=secret,
                                                certificate=args.certificate, rules=rules)})
    login = ", ".join(way for way, held in (("password", secret is not None),
                                            ("certificate", args.certificate)) if held)
    return _report(args, {"user": args.name, "added": True, "file": path,
                          "password": secret is not None, "certificate": args.certificate,
                          "permissions": _rules_record(rules)},
                   f"added user {args.name!r} to {path} (login: {login}; "
                   f"{_rules_text(rules)})")


@_guarded
def passwd(args: argparse.Namespace) -> int:
    """``conveyor user passwd NAME``: a new password (the old one stops working)."""
    path = users_path(args)
    users = _load(path)
    user = _existing(users, args.name, path)
    secret = _secret(args, args.name)
    _save(path, {**users.users, user.name: replace(user, secret=secret)})
    return _report(args, {"user": user.name, "password_changed": True, "file": path},
                   f"changed the password of user {user.name!r} in {path}")


@_guarded
def remove(args: argparse.Namespace) -> int:
    """``conveyor user remove NAME``."""
    path = users_path(args)
    users = _load(path)
    user = _existing(users, args.name, path)
    _save(path, {name: kept for name, kept in users.users.items() if name != user.name})
    return _report(args, {"user": user.name, "removed": True, "file": path},
                   f"removed user {user.name!r} from {path}")


@_guarded
def grant(args: argparse.Namespace) -> int:
    """``conveyor user grant NAME --permission PERM:GLOB [...]``."""
    path = users_path(args)
    users = _load(path)
    user = _existing(users, args.name, path)
    asked = _rules(args.permission)
    added = {permission: tuple(g for g in globs if g not in user.rules[permission])
             for permission, globs in asked.items()}
    if not any(added.values()):
        raise CommandFailed(f"user {user.name!r} already holds {_rules_text(asked)}; "
                            f"nothing changed")
    rules = {permission: (*user.rules[permission], *added.get(permission, ()))
             for permission in Permission}
    _save(path, {**users.users, user.name: replace(user, rules=rules)})
    return _report(args, {"user": user.name, "granted": _rules_record(added), "file": path},
                   f"granted user {user.name!r} {_rules_text(added)} in {path}")


@_guarded
def revoke(args: argparse.Namespace) -> int:
    """``conveyor user revoke NAME --permission PERM:GLOB [...]``: remove those exact globs."""
    path = users_path(args)
    users = _load(path)
    user = _existing(users, args.name, path)
    asked = _rules(args.permission)
    for permission, globs in asked.items():
        for glob in globs:
            if glob not in user.rules[permission]:
                raise CommandFailed(f"user {user.name!r} holds no {permission.value} on "
                                    f"{glob!r}; nothing changed")
    rules = {permission: tuple(g for g in user.rules[permission]
                               if g not in asked.get(permission, ()))
             for permission in Permission}
    _save(path, {**users.users, user.name: replace(user, rules=rules)})
    return _report(args, {"user": user.name, "revoked": _rules_record(asked), "file": path},
                   f"revoked {_rules_text(asked)} from user {user.name!r} in {path}")


@_guarded
def list_users(args: argparse.Namespace) -> int:
    """``conveyor user list``: each user, how it logs in and its globs (never a secret)."""
    path = users_path(args)
    users = _load(path)
    if args.json:
        print_json([{"name": user.name, "password": user.secret is not None,
                     "certificate": user.certificate,
                     **{permission.value: list(user.rules[permission])
                        for permission in Permission}}
                    for user in users.users.values()])
        return OK
    console = out_console()
    if not users.users:
        console.print(Text(f"no users in {path}"))
        return OK
    # The title on a line of its own: as a table title, a long path would wrap at the table's
    # width.
    console.print(Text(f"users in {path}"))
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("user", no_wrap=True)
    table.add_column("login", no_wrap=True)
    for permission in Permission:
        table.add_column(permission.value)
    for user in users.users.values():
        login = ", ".join(way for way, held in (("password", user.secret is not None),
                                                ("certificate", user.certificate)) if held)
        # Text cells: a glob such as "jobs.[ab]" is not rich markup.
        table.add_row(Text(user.name), login,
                      *(Text(" ".join(user.rules[permission])) for permission in Permission))
    console.print(table)
    return OK
