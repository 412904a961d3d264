"""The ceiling: the worker's own claim and complete statements, driven with the bare driver.

No SQLAlchemy at run time, no worker, no pool: the very compiled statements the reference
backend's hot path executes (``SQLBackend._claim_update`` and friends, see zart_ref/hotpath.py)
run in the backend's order and transactions on one bare asyncpg, aiomysql or aiosqlite
connection per loop. Same batch (max_tasks_per_poll) and the same tasks in flight
(max_concurrent_tasks: claim loops of one batch each), so the ratio worker / ceiling is what
the worker's Python costs.

Run as ``python -m zart_conformance.bench.ceiling SPEC`` it is one ceiling process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pickle
import signal
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from zart_conformance.provision import Target
from zart_ref import PoolConfig, SQLBackend, WorkerConfig
from zart_ref.hotpath import Compiled
from zart_ref.sql import _group_binds

from .stamps import mark_ready
from .throughput import POLL


@dataclass(frozen=True)
class Spec:
    """Everything a ceiling process needs: the target, batch and concurrency."""

    url: str
    schema: str | None
    batch: int
    loops: int
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
        loops=math.ceil(config.max_concurrent_tasks / config.max_tasks_per_poll),
        lease=config.lease_duration,
    )


def _connect_args(backend: SQLBackend) -> dict[str, Any]:
    """The driver's connect() arguments: the URL and the dialect's own session settings."""
    url = backend.url
    options = backend.dialect.engine_options(url, PoolConfig()).get("connect_args", {})
    if backend.dialect.name == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return {"dsn": dsn, **options}
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


async def _pg_loop(spec: Spec, worker_id: str) -> None:
    import asyncpg

    backend = spec.backend()
    conn = await asyncpg.connect(**_connect_args(backend))
    claim = backend._claim_update(spec.lease)
    try:
        while True:
            token = uuid.uuid4().hex
            binds = {"worker_id": worker_id, "token": token, "limit": spec.batch}
            rows = await conn.fetch(claim.sql, *claim.parameters(binds))
            if not rows:
                await asyncio.sleep(POLL)
                continue
            complete = backend._complete_update(len(rows))
            items = {row["id"]: (token, "null") for row in rows}
            await conn.fetch(complete.sql, *complete.parameters(_group_binds(items)))
    finally:
        conn.terminate()


async def _mysql_loop(spec: Spec, worker_id: str) -> None:
    import aiomysql
    import pymysql

    backend = spec.backend()
    conn = await aiomysql.connect(autocommit=False, **_connect_args(backend))
    lock = backend._claim_lock()
    lease = timedelta(microseconds=round(spec.lease * 1_000_000))

    async def claim(cur: Any, binds: dict[str, Any]) -> list[str]:
        await cur.execute(lock.sql, lock.parameters(binds))
        rows = lock.rows(await cur.fetchall())
        if rows:
            now = rows[0][-1]
            marks = {**binds, **{f"id{i}": row[0] for i, row in enumerate(rows)}}
            mark = backend._claim_mark(len(rows))
            await cur.execute(
                mark.sql, mark.parameters(marks | {"now": now, "expires": now + lease})
            )
        return [row[0] for row in rows]

    async def complete(cur: Any, items: dict[str, tuple[str, str]]) -> None:
        complete_lock = backend._complete_lock(len(items))
        await cur.execute(complete_lock.sql, complete_lock.parameters(_group_binds(items)))
        locked = complete_lock.rows(await cur.fetchall())
        held = {row[0]: items[row[0]] for row in locked if row[1] == items[row[0]][0]}
        if held:
            update = backend._complete_update(len(held), fenced=False)
            values = {**_group_binds(held), "now": locked[0][2]}
            await cur.execute(update.sql, update.parameters(values))

    async def transaction(cur: Any, body: Any, *args: Any) -> Any:
        """Commit, or roll back and run again on a deadlock or lock wait, as SQLBackend does."""
        while True:
            try:
                result = await body(cur, *args)
                await conn.commit()
                return result
            except pymysql.err.OperationalError as exc:
                if exc.args[0] not in (1213, 1205):
                    raise
                await conn.rollback()

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(conn.close)
        cur = await stack.enter_async_context(conn.cursor())
        while True:
            token = uuid.uuid4().hex
            binds = {"worker_id": worker_id, "token": token, "limit": spec.batch}
            ids = await transaction(cur, claim, binds)
            if not ids:
                await asyncio.sleep(POLL)
                continue
            await transaction(cur, complete, {task_id: (token, "null") for task_id in ids})


# Like SQLBackend, a process's SQLite transactions queue on a lock, not in the busy handler.
_SQLITE_WRITER: asyncio.Lock | None = None


async def _sqlite_loop(spec: Spec, worker_id: str) -> None:
    import aiosqlite

    global _SQLITE_WRITER
    writer = _SQLITE_WRITER = _SQLITE_WRITER or asyncio.Lock()
    backend = spec.backend()
    connect = _connect_args(backend)
    conn = await aiosqlite.connect(connect["database"], isolation_level=None)
    busy_ms = int(connect.get("timeout", 30) * 1000)
    for pragma in ("journal_mode=WAL", f"busy_timeout={busy_ms}", "synchronous=NORMAL"):
        await conn.execute(f"PRAGMA {pragma}")

    async def transaction(statement: Compiled, binds: dict[str, Any]) -> list[Any]:
        """One statement on its own, as the backend runs it (hot_autocommit "native")."""
        async with writer:
            cursor = await conn.execute(statement.sql, statement.parameters(binds))
            return list(await cursor.fetchall())

    claim = backend._claim_update(spec.lease)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(conn.close)
        while True:
            token = uuid.uuid4().hex
            binds = {"worker_id": worker_id, "token": token, "limit": spec.batch}
            rows = await transaction(claim, binds)
            if not rows:
                await asyncio.sleep(POLL)
                continue
            complete = backend._complete_update(len(rows))
            await transaction(complete, _group_binds({row[0]: (token, "null") for row in rows}))


LOOPS = {"postgresql": _pg_loop, "mysql": _mysql_loop, "sqlite": _sqlite_loop}


def _dialect(spec: Spec) -> str:
    return spec.backend().dialect.name


async def _serve(spec: Spec) -> None:
    worker_id = f"ceiling-{os.getpid()}"
    loops = [asyncio.create_task(LOOPS[_dialect(spec)](spec, worker_id)) for _ in range(spec.loops)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    mark_ready()
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*loops, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in [*loops, stopped]:
        task.cancel()
    for task in done - {stopped}:
        task.result()  # a loop that ended on its own failed: its error ends the process


if __name__ == "__main__":
    asyncio.run(_serve(pickle.loads(Path(sys.argv[1]).read_bytes())))
