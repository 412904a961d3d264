"""The SQL backend: every operation once, in SQLAlchemy Core, with dialect-specific pieces."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Row
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import payload as payloads
from .backend import ClaimedTask, Lease, NewTask, TaskRecord
from .config import PoolConfig
from .dialects import Dialect, dialect_for
from .errors import DatabaseUnavailable, LeaseLost
from .schema import COMPLETED, FAILED, RUNNING, SCHEDULED, metadata, tasks
from .urls import normalize_url, redact

_INSERT_CHUNK = 500
t = tasks


class SQLBackend:
    """The reference backend for PostgreSQL, MySQL/MariaDB and SQLite.

    ``schema`` namespaces the tables (a PostgreSQL schema or MySQL database), which is how the
    conformance kit isolates runs and how applications share a database.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        pool: PoolConfig | None = None,
        schema: str | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self.pool = pool or PoolConfig()
        self.schema = schema
        self.dialect: Dialect = dialect_for(self.url)
        engine = self.dialect.create_engine(self.url, self.pool)
        self._root_engine = engine
        self.engine: AsyncEngine = (
            engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r}, schema={self.schema!r})"

    # -- plumbing -------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One short transaction; connection failures become DatabaseUnavailable."""
        try:
            async with self.engine.begin() as conn:
                yield conn
        except (OperationalError, InterfaceError, OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(f"database {redact(self.url)} unavailable: {exc}") from exc

    async def migrate(self) -> None:
        async with self.transaction() as conn:
            await self.dialect.lock_migrations(conn)
            if self.schema:
                await self.dialect.create_namespace(conn, self.schema)
            await conn.run_sync(metadata.create_all, checkfirst=True)

    async def now(self) -> datetime:
        async with self.transaction() as conn:
            value = (await conn.execute(select(self.dialect.now()))).scalar_one()
        assert isinstance(value, datetime)
        return value

    async def close(self) -> None:
        await self._root_engine.dispose()

    # -- scheduling -----------------------------------------------------------------------

    def _insert_ignoring_duplicates(self, rows: list[dict[str, Any]]) -> Any:
        name = self.dialect.name
        if name == "postgresql":
            return pg_insert(t).values(rows).on_conflict_do_nothing(index_elements=[t.c.id])
        if name == "sqlite":
            return sqlite_insert(t).values(rows).on_conflict_do_nothing(index_elements=[t.c.id])
        return insert(t).values(rows).prefix_with("IGNORE")

    def _run_at(self, task: NewTask) -> ColumnElement[datetime] | datetime:
        if task.run_at is not None:
            return payloads.require_aware(task.run_at, what=f"run_at of task {task.id!r}")
        return self.dialect.now_plus(task.delay) if task.delay else self.dialect.now()

    async def schedule(self, new: Sequence[NewTask]) -> list[bool]:
        rows = [
            {
                "id": task.id,
                "name": task.name,
                "payload": payloads.encode(task.payload, what=f"payload of task {task.id!r}"),
                "status": SCHEDULED,
                "run_at": self._run_at(task),
                "attempts": 0,
                "created_at": self.dialect.now(),
                "updated_at": self.dialect.now(),
            }
            for task in new
        ]
        created: set[str] = set()
        async with self.transaction() as conn:
            for start in range(0, len(rows), _INSERT_CHUNK):
                chunk = rows[start : start + _INSERT_CHUNK]
                stmt = self._insert_ignoring_duplicates(chunk).returning(t.c.id)
                created.update((await conn.execute(stmt)).scalars())
        return [task.id in created for task in new]

    # -- claiming -------------------------------------------------------------------------

    def _due(self, limit: int) -> Select[tuple[str]]:
        return (
            select(t.c.id)
            .where(t.c.status == SCHEDULED, t.c.run_at <= self.dialect.now())
            .order_by(t.c.run_at, t.c.id)
            .limit(limit)
        )

    def _claim_values(self, worker_id: str, token: str, lease_seconds: float) -> dict[str, Any]:
        now = self.dialect.now()
        return {
            "status": RUNNING,
            "lock_token": token,
            "locked_by": worker_id,
            "attempts": t.c.attempts + 1,
            "claimed_at": now,
            "lease_expires_at": self.dialect.now_plus(lease_seconds),
            "updated_at": now,
        }

    _CLAIMED = (t.c.id, t.c.name, t.c.payload, t.c.attempts, t.c.claimed_at, t.c.lease_expires_at)

    @staticmethod
    def new_token() -> str:
        """A fresh fencing token: one per claim, never reused, never a worker's name."""
        return uuid.uuid4().hex

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        token = self.new_token()
        if self.dialect.name == "postgresql":
            # A materialized CTE locks the rows once; `IN (subselect LIMIT n SKIP LOCKED)`
            # may be re-run by the planner and return more than `limit` rows.
            picked = (self._due(limit).with_for_update(skip_locked=True).cte("picked")).prefix_with(
                "MATERIALIZED"
            )
            where: ColumnElement[bool] = t.c.id == picked.c.id
        else:
            # SQLite: BEGIN IMMEDIATE already holds the only write lock.
            where = t.c.id.in_(self._due(limit).scalar_subquery())
        stmt = (
            update(t)
            .where(where)
            .values(self._claim_values(worker_id, token, lease_seconds))
            .returning(*self._CLAIMED)
        )
        async with self.transaction() as conn:
            rows = (await conn.execute(stmt)).all()
        return [self._claimed(row, token) for row in rows]

    @staticmethod
    def _claimed(row: Row[Any], token: str) -> ClaimedTask:
        return ClaimedTask(
            id=row.id,
            name=row.name,
            payload=payloads.decode(row.payload),
            token=token,
            attempt=row.attempts,
            claimed_at=row.claimed_at,
            lease_expires_at=row.lease_expires_at,
        )

    # -- fenced writes --------------------------------------------------------------------

    def _held(self, lease: Lease) -> ColumnElement[bool]:
        return (t.c.id == lease.task_id) & (t.c.lock_token == lease.token) & (t.c.status == RUNNING)

    async def _fenced_update(
        self, lease: Lease, operation: str, values: dict[str, Any]
    ) -> datetime:
        stmt = update(t).where(self._held(lease)).values(values).returning(t.c.updated_at)
        async with self.transaction() as conn:
            stamp = (await conn.execute(stmt)).scalar_one_or_none()
        if stamp is None:
            raise LeaseLost(lease.task_id, lease.token, operation)
        assert isinstance(stamp, datetime)
        return stamp

    def _finish(self, status: str) -> dict[str, Any]:
        now = self.dialect.now()
        return {
            "status": status,
            "lock_token": None,
            "lease_expires_at": None,
            "updated_at": now,
            "finished_at": now,
        }

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> dict[str, datetime]:
        if not leases:
            return {}
        stmt = (
            update(t)
            .where(
                t.c.status == RUNNING,
                tuple_(t.c.id, t.c.lock_token).in_([(x.task_id, x.token) for x in leases]),
            )
            .values(lease_expires_at=self.dialect.now_plus(lease_seconds))
            .returning(t.c.id, t.c.lease_expires_at)
        )
        async with self.transaction() as conn:
            return {row.id: row.lease_expires_at for row in await conn.execute(stmt)}

    @staticmethod
    def encode_result(lease: Lease, result: Any) -> str:
        return payloads.encode(result, what=f"result of task {lease.task_id!r}")

    async def complete(self, lease: Lease, result: Any) -> datetime:
        values = {**self._finish(COMPLETED), "result": self.encode_result(lease, result)}
        return await self._fenced_update(lease, "complete", values)

    async def fail(self, lease: Lease, error: str, retry_in: float | None) -> datetime:
        if retry_in is None:
            values = {**self._finish(FAILED), "error": error}
        else:
            values = {
                "status": SCHEDULED,
                "lock_token": None,
                "lease_expires_at": None,
                "run_at": self.dialect.now_plus(retry_in),
                "updated_at": self.dialect.now(),
                "error": error,
            }
        return await self._fenced_update(lease, "fail", values)

    async def release(self, lease: Lease) -> datetime:
        return await self._fenced_update(
            lease,
            "release",
            {
                "status": SCHEDULED,
                "lock_token": None,
                "lease_expires_at": None,
                "attempts": t.c.attempts - 1,
                "updated_at": self.dialect.now(),
            },
        )

    async def recover_orphans(self) -> list[str]:
        stmt = (
            update(t)
            .where(t.c.status == RUNNING, t.c.lease_expires_at < self.dialect.now())
            .values(
                status=SCHEDULED,
                lock_token=None,
                lease_expires_at=None,
                updated_at=self.dialect.now(),
            )
            .returning(t.c.id)
        )
        async with self.transaction() as conn:
            return list((await conn.execute(stmt)).scalars())

    # -- reading --------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self.transaction() as conn:
            row = (await conn.execute(select(t).where(t.c.id == task_id))).one_or_none()
        if row is None:
            return None
        return TaskRecord(
            id=row.id,
            name=row.name,
            status=row.status,
            payload=payloads.decode(row.payload),
            attempts=row.attempts,
            run_at=row.run_at,
            result=payloads.decode(row.result),
            error=row.error,
            locked_by=row.locked_by,
            lease_expires_at=row.lease_expires_at,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )

    async def count_by_status(self) -> dict[str, int]:
        stmt = select(t.c.status, func.count()).group_by(t.c.status)
        async with self.transaction() as conn:
            return {status: count for status, count in (await conn.execute(stmt)).all()}
