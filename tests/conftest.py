"""Shared fixtures: real SQLite files and a real PostgreSQL server, each test in its own namespace.

A server the tests need but cannot find is a skip on a laptop and a failure in CI, so a green
CI run never hides a skipped backend.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from zart_conformance.provision import Target
from zart_ref import SQLBackend

SCALE = float(os.environ.get("ZART_TIME_SCALE", "1"))
SERVER_ENV = {"postgres": "ZART_POSTGRES_URL", "mysql": "ZART_MYSQL_URL"}
EXAMPLES = {
    "postgres": "postgresql://postgres@127.0.0.1:5432/test",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}
DIALECTS = {"postgres": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}


def server_url(backend: str) -> str:
    env = SERVER_ENV[backend]
    url = os.environ.get(env)
    if not url:
        message = (
            f"{backend} tests need {env} (e.g. {env}=postgresql://postgres@127.0.0.1:5432/test)"
        )
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run every backend")
        pytest.skip(message)
    return url


def worker_args(target: Target, *extra: str) -> list[str]:
    """The command line of a real `zart worker` process on ``target`` with the kit's handlers."""
    args = [
        sys.executable,
        "-m",
        "zart_ref.cli",
        "worker",
        "--app",
        "zart_conformance.app:registry",
    ]
    args += ["--database-url", target.url, "--poll-interval", str(0.1 * SCALE)]
    args += ["--lease-duration", str(5 * SCALE), *extra]
    return [*args, "--schema", target.schema] if target.schema else args


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    """Poll a database-side condition (another process's work or clock) until it holds."""
    async with asyncio.timeout(seconds * SCALE):
        while not await check():  # noqa: ASYNC110 - the state lives in another process
            await asyncio.sleep(0.05)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'zart.db'}"


@pytest.fixture
def postgres_url() -> str:
    return server_url("postgres")


@pytest.fixture
def mysql_url() -> str:
    return server_url("mysql")


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """An empty namespace on each backend (a file, a schema, a database), removed afterwards."""
    if request.param == "sqlite":
        yield Target(f"sqlite:///{tmp_path / 'zart.db'}", None, "sqlite")
        return
    target = Target(server_url(request.param), new_namespace(), DIALECTS[request.param])
    try:
        yield target
    finally:
        await target.drop()


def new_namespace() -> str:
    return f"zart_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def backend(db: Target) -> AsyncIterator[SQLBackend]:
    instance = SQLBackend(db.url, schema=db.schema)
    await instance.migrate()
    try:
        yield instance
    finally:
        await instance.close()


@pytest.fixture(autouse=True, scope="session")
def _runs_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["ZART_RUN_DIR"] = str(tmp_path_factory.mktemp("zart-runs"))
