"""The README's Python examples run as written: a block is a whole program (no top-level
``await``) unless it stands in the section the README marks for ``python -m asyncio``, and no
block uses a name it neither defines nor imports (the asyncio REPL blocks are read as one
session, in order)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
REPL_START = "The snippets from here to [Delivery](#delivery) are for the asyncio REPL"
REPL_END = "\n## Delivery\n"

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ``python`` block."""
    return [(text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in _BLOCK.finditer(text)]


start = README.index(REPL_START)
end = README.index(REPL_END, start)
PROGRAMS = _blocks(README[:start]) + [
    (line + README.count("\n", 0, end), code) for line, code in _blocks(README[end:])]
SESSION = [(line + README.count("\n", 0, start), code)
           for line, code in _blocks(README[start:end])]


def test_the_readme_has_both_kinds_of_example() -> None:
    assert len(PROGRAMS) >= 5 and len(SESSION) >= 5


@pytest.mark.parametrize("code", [code for _, code in PROGRAMS],
                         ids=[f"line {line}" for line, _ in PROGRAMS])
def test_a_program_compiles_without_top_level_await(code: str) -> None:
    compile(code, "<README>", "exec")


def test_the_repl_session_compiles_with_top_level_await() -> None:
    for line, code in SESSION:
        try:
            compile(code, f"<README line {line}>", "exec",
                    flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        except SyntaxError as exc:  # pragma: no cover - the message is the assertion
            raise AssertionError(f"README line {line}: {exc}") from None


def test_no_example_uses_an_undefined_name(tmp_path: Path) -> None:
    files = []
    for line, code in PROGRAMS:
        path = tmp_path / f"program_line_{line}.py"
        path.write_text(code)
        files.append(path)
    session = tmp_path / "session.py"
    # Top-level await is fine in the REPL; wrapped in a coroutine, ruff reads it as code.
    session.write_text("async def _session() -> None:\n" + "".join(
        "".join(f"    {text}\n" if text else "\n" for text in code.splitlines())
        for _, code in SESSION))
    files.append(session)
    # F821: undefined name; F811/F841 would only flag style, so they are left out.
    checked = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "--isolated",
                              "--select", "F821,F822,F823", "--output-format", "concise",
                              *map(str, files)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
