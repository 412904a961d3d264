"""The ``zart`` command as users run it: a real subprocess against real databases."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SCALE, eventually, worker_args
from zart_conformance.provision import Target
from zart_ref import NewTask, SQLBackend

ZART = [sys.executable, "-m", "zart_ref.cli"]


def zart(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ZART, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_migrate_creates_the_schema_and_can_run_again(sqlite_url: str) -> None:
    for _ in range(2):
        result = zart("migrate", "--database-url", sqlite_url)
        assert result.returncode == 0, result.stderr
        assert "schema is up to date" in result.stdout


@pytest.mark.parametrize(
    ("url", "code", "fragment"),
    [
        ("oracle://scott:hunter2@db/x", 2, "unsupported scheme 'oracle'"),
        ("postgresql://scott:hunter2@127.0.0.1:1/x", 3, "unavailable"),
    ],
)
def test_bad_or_unreachable_urls_fail_in_one_line_without_the_password(
    url: str, code: int, fragment: str
) -> None:
    result = zart("migrate", "--database-url", url)
    assert result.returncode == code
    assert fragment in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("app", "fragment"),
    [
        ("no_such_module:registry", "cannot import module 'no_such_module'"),
        ("zart_conformance.app:nothing", "has no 'nothing'"),
        ("zart_conformance.app", "is not of the form module:attribute"),
        ("zart_conformance.app:sleep_task", "not a Registry"),
    ],
)
def test_bad_app_paths_say_what_is_wrong(sqlite_url: str, app: str, fragment: str) -> None:
    result = zart("worker", "--app", app, "--database-url", sqlite_url)
    assert result.returncode == 2
    assert fragment in result.stderr


def test_database_url_comes_from_the_environment(sqlite_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    result = subprocess.run(
        [*ZART, "migrate"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_worker_process_runs_tasks_and_exits_zero_on_signal(
    db: Target, tmp_path: Path, signum: signal.Signals
) -> None:
    url, schema = db.url, db.schema
    backend = SQLBackend(url, schema=schema)
    await backend.migrate()
    await backend.schedule([NewTask(f"t{i}", "echo", {"i": i}) for i in range(5)])
    env = {**os.environ, "ZART_EVENT_DIR": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        *worker_args(db), env=env, stderr=asyncio.subprocess.PIPE
    )
    try:

        async def all_completed() -> bool:
            return (await backend.count_by_status()).get("completed", 0) == 5

        await eventually(all_completed)
        process.send_signal(signum)
        _, stderr = await asyncio.wait_for(process.communicate(), 30 * SCALE)
        assert process.returncode == 0, stderr.decode()
        record = await backend.get("t3")
        assert record is not None and record.result["result"] == {"i": 3}
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await backend.close()


async def test_concurrent_migrate_processes_are_safe(db: Target) -> None:
    args = [*ZART, "migrate", "--database-url", db.url]
    if db.schema:
        args += ["--schema", db.schema]
    processes = [
        await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE)
        for _ in range(3)
    ]
    results = [await p.communicate() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err.decode() for _, err in results]


def test_embedded_example_runs(db: Target) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "embedded.py"
    env = {**os.environ, "DATABASE_URL": db.url, "ZART_SCHEMA": db.schema or ""}
    result = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["hello, ada", "hello, grace", "hello, barbara"]


def test_zart_worker_is_the_sidecar_entry_point() -> None:
    code = "import sys; sys.argv = ['zart-worker', '--help']; from zart_ref.cli import worker_main; worker_main()"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (
        "Run a worker until SIGTERM or SIGINT" in result.stdout and "--health-port" in result.stdout
    )
