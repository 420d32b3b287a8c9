"""What ``pip install .`` puts on a user's machine: ``conveyor`` and nothing else at the top level,
typed (``py.typed``) so that a user's ``mypy --strict`` sees Conveyor's types."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import free_port, read_line

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("protocol", "broker", "client", "worker", "cli", "dashboard")

USER_CODE = '''
from conveyor.client import Client, JobSpec, SyncClient
from conveyor.worker import Job, Worker


async def handle(job: Job) -> dict[str, int]:
    return {"attempt": job.attempt}


async def produce() -> int:
    async with Client("127.0.0.1:7400") as client:
        ids: list[int] = await client.add_bulk("q", [1, JobSpec(2, priority=1)])
        return ids[0] + await client.add("q", {"a": 1}, attempts=3)


def produce_sync() -> int:
    with SyncClient("127.0.0.1:7400") as client:
        return client.add("q", 1)


worker = Worker("q", handle, concurrency=2)
'''

WRONG_CODE = '''
from conveyor.client import Client


async def produce(client: Client) -> str:
    return await client.add("q", 1)
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (so the build leaves nothing in the repo)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--disable-pip-version-check", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=300)
    (built,) = out.glob("conveyor-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed (its dependencies come from ours)."""
    home = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True,
                   timeout=120)
    python = home / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # msgspec, uvloop and rich from the test environment, without its editable Conveyor.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    yield home


def test_the_wheel_installs_conveyor_and_nothing_else_at_the_top_level(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(name).decode() for name in names
                            if name.endswith(".dist-info/entry_points.txt"))
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"conveyor"}
    assert "conveyor/__init__.py" not in names, "conveyor is a namespace of its packages"
    for folder in FOLDERS:
        assert f"conveyor/{folder}/__init__.py" in names
        assert f"conveyor/{folder}/py.typed" in names
    assert "conveyor = conveyor.cli:main" in entry_points
    # The dashboard's pages and assets are package data: without them it serves nothing.
    for asset in ("templates/base.html", "templates/overview.html", "static/app.js",
                  "static/style.css"):
        assert f"conveyor/dashboard/{asset}" in names


def test_the_installed_command_runs_from_a_directory_of_lookalike_modules(
        venv: Path, tmp_path: Path) -> None:
    for name in ("worker", "client", "broker", "protocol"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the wrong module was imported')\n")
    done = subprocess.run([str(venv / "bin" / "conveyor"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("broker", "worker", "status", "add", "events"):
        assert command in done.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import conveyor.client; print(conveyor.client.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr


def test_mypy_strict_sees_the_installed_types(venv: Path, tmp_path: Path) -> None:
    good, wrong = tmp_path / "good.py", tmp_path / "wrong.py"
    good.write_text(textwrap.dedent(USER_CODE))
    wrong.write_text(textwrap.dedent(WRONG_CODE))
    mypy = [str(Path(sys.executable).parent / "mypy"), "--strict", "--no-incremental",
            "--python-executable", str(venv / "bin" / "python")]
    checked = subprocess.run([*mypy, str(good)], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The types are really Conveyor's, not Any: a wrong return type is caught.
    caught = subprocess.run([*mypy, str(wrong)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert caught.returncode == 1
    assert 'Incompatible return value type (got "int", expected "str")' in caught.stdout


def test_the_installed_dashboard_serves_its_pages_and_assets(venv: Path, tmp_path: Path) -> None:
    # No broker listens on the port given: the pages say so, from the installed templates.
    command = [str(venv / "bin" / "conveyor"), "dashboard", "--port", "0",
               "--url", f"127.0.0.1:{free_port()}"]
    with subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as dashboard:
        assert dashboard.stdout is not None
        try:
            line = read_line(dashboard.stdout, 30)
            assert line.startswith("listening on http://127.0.0.1:"), line
            base = line.removeprefix("listening on ").rstrip("/")
            with urllib.request.urlopen(f"{base}/static/app.js", timeout=30) as response:
                assert b"EventSource" in response.read()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}/", timeout=30)
            with refused.value:
                assert refused.value.code == 503
                assert b"Broker unreachable" in refused.value.read()
        finally:
            dashboard.terminate()
            assert dashboard.wait(30) == 0
