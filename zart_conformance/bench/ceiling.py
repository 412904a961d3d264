"""The ceiling: the worker's own claim and complete statements, driven with the bare driver.

No SQLAlchemy at run time, no worker, no pool: the very compiled statements the reference
backend's hot path executes (``SQLBackend._claim_update`` and friends, see zart_ref/hotpath.py)
run in the backend's order and transactions on bare asyncpg, aiomysql or aiosqlite
connections, in the worker's pipeline: one claim loop takes up to max_tasks_per_poll while
the completions claimed before are written, and every completion that has gathered meanwhile
goes in one statement (at most 64, as the backend's group commit), with at most twice
max_concurrent_tasks held. So the ratio worker / ceiling is what the worker's Python costs,
not what its statements cost.

Run as ``python -m zart_conformance.bench.ceiling SPEC`` it is one ceiling process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from zart_conformance.provision import Target
from zart_ref import PoolConfig, SQLBackend, WorkerConfig
from zart_ref.hotpath import Compiled
from zart_ref.sql import _MAX_GROUP, _group_binds
from zart_ref.urls import libpq_dsn

from .stamps import mark_ready
from .throughput import POLL


@dataclass(frozen=True)
class Spec:
    """Everything a ceiling process needs: the target, batch and concurrency."""

    url: str
    schema: str | None
    batch: int
    concurrency: int
    lease: float

    def backend(self) -> SQLBackend:
        """The reference backend, for its compiled statements only: it never connects."""
        return SQLBackend(self.url, schema=self.schema)


def spec_for(backend: SQLBackend, config: WorkerConfig | None = None) -> Spec:
    config = config or WorkerConfig()
    return Spec(
        url=backend.url.render_as_string(hide_password=False),
        schema=backend.schema,
        batch=config.max_tasks_per_poll,
        concurrency=config.max_concurrent_tasks,
        lease=config.lease_duration,
    )


def _connect_args(backend: SQLBackend) -> dict[str, Any]:
    """The driver's connect() arguments: the URL and the dialect's own session settings."""
    url = backend.url
    options = backend.dialect.engine_options(url, PoolConfig()).get("connect_args", {})
    if backend.dialect.name == "postgresql":
        return {"dsn": libpq_dsn(url), **options}
    if backend.dialect.name == "mysql":
        where = {"host": url.host, "port": url.port or 3306, "user": url.username}
        return {**where, "password": url.password or "", "db": url.database, **options}
    return {"database": url.database, **options}


def ceiling_command(run_dir: Path) -> Any:
    """A throughput command factory: writes the target's spec, returns the process command."""

    def command(target: Target, backend: SQLBackend) -> list[str]:
        path = run_dir / f"ceiling-{uuid.uuid4().hex[:8]}.spec"
        path.write_bytes(pickle.dumps(spec_for(backend)))
        return [sys.executable, "-m", "zart_conformance.bench.ceiling", str(path)]

    return command


# -- one ceiling process -----------------------------------------------------------------

# What a driver gives the pipeline: claim(conn, limit) -> [(id, token)], complete(conn, items).
Items = dict[str, tuple[str, str]]


@dataclass
class Driver:
    connect: Callable[[], Awaitable[Any]]
    claim: Callable[[Any, int], Awaitable[list[tuple[str, str]]]]
    complete: Callable[[Any, Items], Awaitable[None]]
    close: Callable[[Any], Awaitable[None]]


async def _pipeline(spec: Spec, driver: Driver) -> None:
    """Claim while earlier completions are written; write whatever gathered in one go."""
    claims, writes = await driver.connect(), await driver.connect()
    gathered: Items = {}
    held = 0
    changed = asyncio.Event()

    async def write() -> None:
        nonlocal held
        while True:
            while not gathered:
                changed.clear()
                await changed.wait()
            batch = dict(list(gathered.items())[:_MAX_GROUP])
            for task_id in batch:
                del gathered[task_id]
            await driver.complete(writes, batch)
            held -= len(batch)
            changed.set()

    writer = asyncio.create_task(write())
    try:
        while True:
            free = min(spec.batch, 2 * spec.concurrency - held)
            if free <= 0:
                changed.clear()
                await changed.wait()
                continue
            rows = await driver.claim(claims, free)
            if not rows:
                await asyncio.sleep(POLL)
                continue
            held += len(rows)
            gathered.update((task_id, (token, "null")) for task_id, token in rows)
            changed.set()
            if writer.done():
                writer.result()  # a failed write ends the process with its error
    finally:
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer
        await driver.close(claims)
        await driver.close(writes)


def _pg_driver(spec: Spec, worker_id: str) -> Driver:
    import asyncpg

    backend = spec.backend()
    claim_stmt = backend._claim_update(spec.lease)

    async def connect() -> Any:
        return await asyncpg.connect(**_connect_args(backend))

    async def claim(conn: Any, limit: int) -> list[tuple[str, str]]:
        token = uuid.uuid4().hex
        binds = {"worker_id": worker_id, "token": token, "limit": limit}
        return [
            (row["id"], token)
            for row in await conn.fetch(claim_stmt.sql, *claim_stmt.parameters(binds))
        ]

    async def complete(conn: Any, items: Items) -> None:
        stmt = backend._complete_update(len(items))
        await conn.fetch(stmt.sql, *stmt.parameters(_group_binds(items)))

    async def close(conn: Any) -> None:
        conn.terminate()

    return Driver(connect, claim, complete, close)


def _mysql_driver(spec: Spec, worker_id: str) -> Driver:
    import aiomysql
    import pymysql

    backend = spec.backend()
    lock = backend._claim_lock()
    lease = timedelta(microseconds=round(spec.lease * 1_000_000))

    async def connect() -> Any:
        return await aiomysql.connect(autocommit=False, **_connect_args(backend))

    async def transaction(conn: Any, body: Callable[[Any], Awaitable[Any]]) -> Any:
        """Commit, or roll back and run again on a deadlock or lock wait, as SQLBackend does."""
        while True:
            try:
                async with conn.cursor() as cur:
                    result = await body(cur)
                await conn.commit()
                return result
            except pymysql.err.OperationalError as exc:
                if exc.args[0] not in (1213, 1205):
                    raise
                await conn.rollback()

    async def claim(conn: Any, limit: int) -> list[tuple[str, str]]:
        token = uuid.uuid4().hex
        binds = {"worker_id": worker_id, "token": token, "limit": limit}

        async def body(cur: Any) -> list[tuple[str, str]]:
            await cur.execute(lock.sql, lock.parameters(binds))
            rows = lock.rows(await cur.fetchall())
            if rows:
                now = rows[0][-1]
                marks = {**binds, **{f"id{i}": row[0] for i, row in enumerate(rows)}}
                mark = backend._claim_mark(len(rows))
                await cur.execute(
                    mark.sql, mark.parameters(marks | {"now": now, "expires": now + lease})
                )
            return [(row[0], token) for row in rows]

        return list(await transaction(conn, body))

    async def complete(conn: Any, items: Items) -> None:
        complete_lock = backend._complete_lock(len(items))

        async def body(cur: Any) -> None:
            await cur.execute(complete_lock.sql, complete_lock.parameters(_group_binds(items)))
            locked = complete_lock.rows(await cur.fetchall())
            held = {row[0]: items[row[0]] for row in locked if row[1] == items[row[0]][0]}
            if held:
                update = backend._complete_update(len(held), fenced=False)
                values = {**_group_binds(held), "now": locked[0][2]}
                await cur.execute(update.sql, update.parameters(values))

        await transaction(conn, body)

    async def close(conn: Any) -> None:
        conn.close()

    return Driver(connect, claim, complete, close)


def _sqlite_driver(spec: Spec, worker_id: str) -> Driver:
    import aiosqlite

    backend = spec.backend()
    connect_args = _connect_args(backend)
    busy_ms = int(connect_args.get("timeout", 30) * 1000)
    claim_stmt = backend._claim_update(spec.lease)
    # Like SQLBackend, a process's SQLite transactions queue on a lock, not in the busy handler.
    writer = asyncio.Lock()

    async def connect() -> Any:
        conn = await aiosqlite.connect(connect_args["database"], isolation_level=None)
        for pragma in ("journal_mode=WAL", f"busy_timeout={busy_ms}", "synchronous=NORMAL"):
            await conn.execute(f"PRAGMA {pragma}")
        return conn

    async def run(conn: Any, stmt: Compiled, binds: dict[str, Any]) -> list[Any]:
        """One statement on its own, as the backend runs it (hot_autocommit "native")."""
        async with writer:
            return list(await conn.execute_fetchall(stmt.sql, stmt.parameters(binds)))

    async def claim(conn: Any, limit: int) -> list[tuple[str, str]]:
        token = uuid.uuid4().hex
        binds = {"worker_id": worker_id, "token": token, "limit": limit}
        return [(row[0], token) for row in await run(conn, claim_stmt, binds)]

    async def complete(conn: Any, items: Items) -> None:
        await run(conn, backend._complete_update(len(items)), _group_binds(items))

    async def close(conn: Any) -> None:
        await conn.close()

    return Driver(connect, claim, complete, close)


DRIVERS = {"postgresql": _pg_driver, "mysql": _mysql_driver, "sqlite": _sqlite_driver}


async def _serve(spec: Spec) -> None:
    worker_id = f"ceiling-{os.getpid()}"
    driver = DRIVERS[spec.backend().dialect.name](spec, worker_id)
    pipeline = asyncio.create_task(_pipeline(spec, driver))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    mark_ready()
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([pipeline, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in (pipeline, stopped):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pipeline  # a pipeline that ended on its own failed: its error ends the process


if __name__ == "__main__":
    asyncio.run(_serve(pickle.loads(Path(sys.argv[1]).read_bytes())))
