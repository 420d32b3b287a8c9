"""Imports flow one way: protocol <- broker, and protocol <- client <- worker (STYLE.md rule 1).

Every module is imported by its ``conveyor.*`` name; a package uses only another package's public
names (``from conveyor.client import Connection``, never ``conveyor.client.connection``), and the
tests, examples and benchmarks never import a private module (``conveyor.broker._log``): the
broker's internals they drive come from ``conveyor.broker.testing``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "broker", "client", "worker", "cli", "dashboard")
BARE = frozenset(PACKAGES)
"""Names that exist only as folders of this repository, never as importable top-level modules."""

# What each package must never import (``conveyor.*`` packages, and top-level module names).
FORBIDDEN: dict[str, set[str]] = {
    "protocol": {"conveyor.broker", "conveyor.client", "conveyor.worker", "conveyor.cli",
                 "asyncio", "socket"},
    "broker": {"conveyor.client", "conveyor.worker", "conveyor.cli", "rich"},
    "client": {"conveyor.broker", "conveyor.worker", "conveyor.cli", "rich"},
    "worker": {"conveyor.broker", "conveyor.cli", "rich"},
    "cli": set(),
    # The dashboard is a client of the broker, like any other: web libraries, never its code.
    "dashboard": {"conveyor.broker", "conveyor.worker", "conveyor.cli", "rich"},
}
ENTRY_POINTS = {"conveyor.broker.cli", "conveyor.worker.cli"}
OTHER_SOURCES = sorted(path for folder in ("tests", "examples", "bench")
                       for path in (ROOT / folder).rglob("*.py"))
# protocol/ is the wire only: the standard library and msgspec, nothing else.
PROTOCOL_ALLOWED_THIRD_PARTY = {"msgspec"}

SOURCES = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = ["conveyor", *path.relative_to(ROOT).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(name: str) -> str | None:
    """``conveyor.client`` for ``conveyor.client.jobs``; None outside the namespace."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "conveyor" and len(parts) > 1 else None


def scan_imports(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Absolute names of every module ``source`` (the module ``module``) imports, anywhere."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                assert node.level <= len(base), f"{module}: relative import beyond the top level"
                base = base[: len(base) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def imported_modules(path: Path) -> set[str]:
    return scan_imports(
        path.read_text(encoding="utf-8"), _module_name(path), is_package=path.name == "__init__.py"
    )


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_sources_are_found() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file()
    assert len(SOURCES) >= 2 * len(PACKAGES)


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_import_direction(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    names = imported_modules(path)
    reached = {name.split(".")[0] for name in names} | {_package_of(name) for name in names}
    bad = sorted(str(name) for name in reached & FORBIDDEN[package])
    assert not bad, f"{_rel(path)} imports {bad}, against the layering of STYLE.md rule 1"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_deep_import_across_packages(path: Path) -> None:
    own = f"conveyor.{path.relative_to(ROOT).parts[0]}"
    # The conveyor command runs the broker's and the worker's own command lines (their
    # ``python -m`` entry points), and nothing else of theirs.
    entry_points = ENTRY_POINTS if own == "conveyor.cli" else set()
    deep = sorted(name for name in imported_modules(path)
                  if _package_of(name) not in (None, own) and name != _package_of(name)
                  and name not in entry_points)
    assert not deep, f"{_rel(path)} reaches past another package's public names: {deep}"


@pytest.mark.parametrize("path", OTHER_SOURCES, ids=_rel)
def test_tests_examples_and_bench_use_no_private_module(path: Path) -> None:
    # Internals are private modules (``conveyor.broker._queues``); what the tests drive directly
    # is exported by a testing module (``conveyor.broker.testing``), so a private module can be
    # split or renamed without touching them.
    private = sorted(name for name in imported_modules(path) if _package_of(name) is not None
                     and any(part.startswith("_") for part in name.split(".")[2:]))
    assert not private, f"{_rel(path)} imports private modules {private}"


@pytest.mark.parametrize("path", SOURCES + OTHER_SOURCES, ids=_rel)
def test_no_bare_package_imports(path: Path) -> None:
    module = _module_name(path) if path in SOURCES else path.stem
    bare = sorted(name for name in imported_modules(path) if name.split(".")[0] in BARE)
    assert not bare, f"{_rel(path)} imports {bare}: use the conveyor.* names ({module})"


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if p.relative_to(ROOT).parts[0] == "protocol"], ids=_rel
)
def test_protocol_uses_only_stdlib_and_msgspec(path: Path) -> None:
    tops = {name.split(".")[0] for name in imported_modules(path)}
    allowed = set(sys.stdlib_module_names) | PROTOCOL_ALLOWED_THIRD_PARTY | {"conveyor"}
    assert tops <= allowed, f"{_rel(path)} imports {sorted(tops - allowed)}"


def test_the_checker_sees_relative_and_nested_imports() -> None:
    # The rules above are only as good as the import scan: prove it catches every form.
    source = (
        "from . import framing\n"
        "from .errors import ProtocolError\n"
        "import os.path, msgspec.msgpack as mp\n"
        "def later():\n"
        "    import asyncio\n"
        "    from conveyor.broker.queues import Queues\n"
        "    if True:\n"
        "        from client import Client\n"
    )
    names = scan_imports(source, "conveyor.protocol.probe")
    assert names == {
        "conveyor.protocol", "conveyor.protocol.errors", "os.path", "msgspec.msgpack", "asyncio",
        "conveyor.broker.queues", "client",
    }
    assert scan_imports("from .queues import Queues", "conveyor.broker", is_package=True) == {
        "conveyor.broker.queues"
    }
    assert _package_of("conveyor.broker.queues") == "conveyor.broker"
    assert _package_of("client") is None


def _declared_all(init: Path) -> list[str]:
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        value: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            assert isinstance(value, ast.List | ast.Tuple), f"{_rel(init)}: __all__ is not literal"
            names = []
            for element in value.elts:
                assert isinstance(element, ast.Constant) and isinstance(element.value, str)
                names.append(element.value)
            return names
    raise AssertionError(f"{_rel(init)} has no explicit __all__")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_exports_explicit_all(package: str) -> None:
    declared = _declared_all(ROOT / package / "__init__.py")
    assert declared, f"{package}.__all__ is empty"
    assert len(declared) == len(set(declared)), f"{package}.__all__ repeats a name"
    module = importlib.import_module(f"conveyor.{package}")
    assert list(module.__all__) == declared
    missing = [name for name in declared if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"
