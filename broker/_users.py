"""The users file: who may connect, with which secret, and what each may do (minimal form)."""

from __future__ import annotations

import base64
import enum
import fnmatch
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field

import scramp

__all__ = ["Permission", "User", "Users", "UsersError", "make_secret"]


class Permission(enum.StrEnum):
    PRODUCE = "produce"
    CONSUME = "consume"
    READ = "read"
    ADMIN = "admin"


class UsersError(Exception):
    pass


@dataclass(frozen=True)
class User:
    name: str
    secret: str | None = field(repr=False)
    certificate: bool
    rules: Mapping[Permission, tuple[str, ...]]

    def may(self, permission: Permission, queue: str) -> bool:
        return any(fnmatch.fnmatchcase(queue, glob) for glob in self.rules.get(permission, ()))

    def may_any(self, queue: str) -> bool:
        return any(self.may(permission, queue) for permission in Permission)

    def scram(self) -> tuple[bytes, bytes, bytes, int]:
        assert self.secret is not None
        mechanism, _, rest = self.secret.partition("$")
        iterations_salt, _, keys = rest.partition("$")
        iterations, _, salt = iterations_salt.partition(":")
        stored, _, server = keys.partition(":")
        return (base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server),
                int(iterations))


@dataclass(frozen=True)
class Users:
    users: Mapping[str, User]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Users:
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsersError(f"cannot read users file {path}: {exc}") from None
        users = {}
        for name, entry in data.get("users", {}).items():
            rules = {p: tuple(entry.get(p.value, ())) for p in Permission}
            users[name] = User(name, entry.get("secret"), bool(entry.get("certificate")), rules)
        return cls(users)

    def get(self, name: str) -> User | None:
        return self.users.get(name)


def make_secret(password: str, *, iterations: int = 4096) -> str:
    salt, stored, server, count = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        password, iteration_count=iterations)
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${count}:{b64(salt).decode()}$"
            f"{b64(stored).decode()}:{b64(server).decode()}")
