"""The SQL backend: every operation once, in SQLAlchemy Core, with dialect-specific pieces."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, Update, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Row
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import payload as payloads
from .backend import ClaimedTask, Lease, NewTask, TaskRecord, validate_new
from .config import PoolConfig
from .dialects import Dialect, dialect_for
from .errors import DatabaseUnavailable, LeaseLost
from .schema import COMPLETED, FAILED, RUNNING, SCHEDULED, metadata, tasks
from .sql_durable import DurableSQL
from .urls import normalize_url, redact

_INSERT_CHUNK = 500
_CONFLICT_RETRIES = 5
t = tasks
T = TypeVar("T")


class SQLBackend(DurableSQL):
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
        listen_url: str | URL | None = None,
    ) -> None:
        self.url = normalize_url(url)
        # LISTEN needs a session of its own: behind PgBouncer in transaction mode, give the
        # server's direct address here.
        self.listen_url = normalize_url(listen_url) if listen_url else self.url
        self.pool = pool or PoolConfig()
        self.schema = schema
        self.dialect: Dialect = dialect_for(self.url)
        engine = self.dialect.create_engine(self.url, self.pool)
        self._root_engine = engine
        self.engine: AsyncEngine = (
            engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        )
        self._server_checked = False
        self._autocommit: AsyncEngine | None = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect.autocommit_writes
            else None
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r}, schema={self.schema!r})"

    # -- plumbing -------------------------------------------------------------------------

    async def run(
        self, body: Callable[[AsyncConnection], Awaitable[T]], *, single_statement: bool = False
    ) -> T:
        """Run ``body`` in one short transaction, bounded in time.

        Lock conflicts (deadlock, serialization failure, busy) roll back and run ``body`` again;
        lost connections and timeouts become DatabaseUnavailable with the redacted URL.
        ``single_statement`` bodies run in autocommit where the dialect allows: one round trip
        in which the server commits before it answers (no separate BEGIN and COMMIT).
        """
        engine = self._autocommit if single_statement else None
        limit = self.pool.statement_timeout + self.pool.acquire_timeout
        for attempt in range(1, _CONFLICT_RETRIES + 1):
            try:
                async with asyncio.timeout(limit):
                    if not self._server_checked:
                        await self._prepare()
                    if engine is not None:
                        async with engine.connect() as conn:
                            return await body(conn)
                    async with self.engine.begin() as conn:
                        return await body(conn)
            except DBAPIError as exc:
                if self.dialect.is_conflict(exc) and attempt < _CONFLICT_RETRIES:
                    await asyncio.sleep(0.01 * attempt)
                    continue
                if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
                    raise self._unavailable(exc) from exc
                raise
            except (OSError, TimeoutError, PoolTimeout) as exc:
                # PoolTimeout: every pooled connection is busy past acquire_timeout.
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def _prepare(self) -> None:
        """Once: refuse a server that cannot keep the contract, and open ``min_connections``."""
        async with contextlib.AsyncExitStack() as stack:
            # Closing returns them to the pool, which keeps them open.
            first, *_ = [
                await stack.enter_async_context(self.engine.connect())
                for _ in range(max(1, self.pool.min_connections))
            ]
            async with first.begin():
                await self.dialect.check_server(first)
        self._server_checked = True

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        reason = str(exc).strip() or type(exc).__name__
        return DatabaseUnavailable(f"database {redact(self.url)} unavailable: {reason}")

    async def _update_returning(
        self,
        conn: AsyncConnection,
        stmt: Update,
        columns: Sequence[ColumnElement[Any]],
        identify: ColumnElement[bool],
    ) -> list[Row[Any]]:
        """UPDATE ... RETURNING, or UPDATE then SELECT the rows ``identify`` picks (MySQL)."""
        if self.dialect.update_returning:
            return list((await conn.execute(stmt.returning(*columns))).all())
        await conn.execute(stmt)
        return list((await conn.execute(select(*columns).where(identify))).all())

    async def migrate(self) -> None:
        async def body(conn: AsyncConnection) -> None:
            async with self.dialect.migration_lock(conn):
                if self.schema:
                    await self.dialect.create_namespace(conn, self.schema)
                await conn.run_sync(metadata.create_all, checkfirst=True)

        await self.run(body)

    async def now(self) -> datetime:
        async def body(conn: AsyncConnection) -> datetime:
            value = (await conn.execute(select(self.dialect.now()))).scalar_one()
            assert isinstance(value, datetime)
            return value

        return await self.run(body)

    async def close(self) -> None:
        await self._root_engine.dispose()

    # -- scheduling -----------------------------------------------------------------------

    def _run_at(self, task: NewTask) -> ColumnElement[datetime] | datetime:
        if task.run_at is not None:
            return payloads.require_aware(task.run_at, what=f"run_at of task {task.id!r}")
        return self.dialect.now_plus(task.delay) if task.delay else self.dialect.now()

    async def schedule(self, new: Sequence[NewTask]) -> list[bool]:
        unique = validate_new(new)
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
            for task in unique
        ]

        async def body(conn: AsyncConnection) -> set[str]:
            created: set[str] = set()
            for start in range(0, len(rows), _INSERT_CHUNK):
                chunk = rows[start : start + _INSERT_CHUNK]
                created |= await self._insert_new(conn, chunk)
            if created:
                await self._notify(conn)
            return created

        created = await self.run(body)
        # A repeated id within one call: only its first task can have been created.
        chosen = {id(task) for task in unique}
        return [task.id in created and id(task) in chosen for task in new]

    async def _insert_new(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert rows whose id is new; returns the ids inserted."""
        name = self.dialect.name
        if name in ("postgresql", "sqlite"):
            insert_fn = pg_insert if name == "postgresql" else sqlite_insert
            stmt = insert_fn(t).values(rows).on_conflict_do_nothing(index_elements=[t.c.id])
            return set((await conn.execute(stmt.returning(t.c.id))).scalars())
        # MySQL has no INSERT ... RETURNING: lock the ids (gap locks included), then insert.
        ids = [row["id"] for row in rows]
        existing = select(t.c.id).where(t.c.id.in_(ids)).with_for_update()
        present = set((await conn.execute(existing)).scalars())
        fresh = [row for row in rows if row["id"] not in present]
        if fresh:
            await conn.execute(insert(t).values(fresh).prefix_with("IGNORE"))
        return {row["id"] for row in fresh}

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
        values = self._claim_values(worker_id, token, lease_seconds)

        async def body(conn: AsyncConnection) -> list[Row[Any]]:
            dialect = self.dialect.name
            if dialect == "postgresql":
                # A materialized CTE locks the rows once; `IN (subselect LIMIT n SKIP LOCKED)`
                # may be re-run by the planner and return more than `limit` rows.
                picked = self._due(limit).with_for_update(skip_locked=True).cte("picked")
                where: ColumnElement[bool] = t.c.id == picked.prefix_with("MATERIALIZED").c.id
            elif dialect == "mysql":
                # Lock the due rows first; the UPDATE then touches exactly those.
                locked = self._due(limit).with_for_update(skip_locked=True)
                ids = list((await conn.execute(locked)).scalars())
                if not ids:
                    return []
                where = t.c.id.in_(ids)
            else:
                # SQLite: BEGIN IMMEDIATE already holds the only write lock.
                where = t.c.id.in_(self._due(limit).scalar_subquery())
            stmt = update(t).where(where).values(values)
            return await self._update_returning(conn, stmt, self._CLAIMED, t.c.lock_token == token)

        return [self._claimed(row, token) for row in await self.run(body)]

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
        self, lease: Lease, operation: str, values: dict[str, Any], *, notify: bool = False
    ) -> datetime:
        stmt = update(t).where(self._held(lease)).values(values)

        async def body(conn: AsyncConnection) -> datetime | None:
            if self.dialect.update_returning:
                stamp = (await conn.execute(stmt.returning(t.c.updated_at))).scalar_one_or_none()
                written = stamp if isinstance(stamp, datetime) else None
            elif (await conn.execute(stmt)).rowcount != 1:
                written = None
            else:
                query = select(t.c.updated_at).where(t.c.id == lease.task_id)
                written = (await conn.execute(query)).scalar_one()
            if written is not None and notify:
                await self._notify(conn)
            return written

        stamp = await self.run(body, single_statement=True)
        if stamp is None:
            raise LeaseLost(lease.task_id, lease.token, operation)
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
        held = (t.c.status == RUNNING) & tuple_(t.c.id, t.c.lock_token).in_(
            [(x.task_id, x.token) for x in leases]
        )
        stmt = update(t).where(held).values(lease_expires_at=self.dialect.now_plus(lease_seconds))

        async def body(conn: AsyncConnection) -> dict[str, datetime]:
            rows = await self._update_returning(conn, stmt, (t.c.id, t.c.lease_expires_at), held)
            return {row.id: row.lease_expires_at for row in rows}

        return await self.run(body, single_statement=True)

    @staticmethod
    def encode_result(lease: Lease, result: Any) -> str:
        return payloads.encode(result, what=f"result of task {lease.task_id!r}")

    async def complete(self, lease: Lease, result: Any) -> datetime:
        values = {**self._finish(COMPLETED), "result": self.encode_result(lease, result)}
        return await self._fenced_update(lease, "complete", values)

    def _back_to_scheduled(self, **extra: Any) -> dict[str, Any]:
        return {
            "status": SCHEDULED,
            "lock_token": None,
            "lease_expires_at": None,
            "updated_at": self.dialect.now(),
            **extra,
        }

    async def fail(self, lease: Lease, error: str, retry_in: float | None) -> datetime:
        if retry_in is None:
            values = {**self._finish(FAILED), "error": error}
        else:
            values = self._back_to_scheduled(run_at=self.dialect.now_plus(retry_in), error=error)
        return await self._fenced_update(lease, "fail", values)

    async def release(self, lease: Lease) -> datetime:
        values = self._back_to_scheduled(attempts=t.c.attempts - 1)
        return await self._fenced_update(lease, "release", values, notify=True)

    async def recover_orphans(self) -> list[str]:
        expired = (t.c.status == RUNNING) & (t.c.lease_expires_at < self.dialect.now())

        async def body(conn: AsyncConnection) -> list[str]:
            if self.dialect.update_returning:
                stmt = update(t).where(expired).values(self._back_to_scheduled())
                return list((await conn.execute(stmt.returning(t.c.id))).scalars())
            locked = select(t.c.id).where(expired).with_for_update(skip_locked=True)
            ids = list((await conn.execute(locked)).scalars())
            if ids:
                stmt = update(t).where(t.c.id.in_(ids)).values(self._back_to_scheduled())
                await conn.execute(stmt)
            return ids

        return await self.run(body)

    # -- notifications --------------------------------------------------------------------

    @property
    def channel(self) -> str:
        """The NOTIFY channel of this schema: workers of other schemas are not woken."""
        return f"zart_work_{self.schema}" if self.schema else "zart_work"

    async def _notify(self, conn: AsyncConnection) -> None:
        """Wake listening workers when this transaction commits (PostgreSQL only)."""
        if self.dialect.name == "postgresql":
            await conn.execute(select(func.pg_notify(self.channel, "")))

    async def listen(self, on_work: Callable[[], None], on_state: Callable[[str], None]) -> None:
        """LISTEN on a dedicated asyncpg connection outside the pool; returns at once elsewhere.

        After a drop it subscribes again with backoff, and wakes the worker once per
        subscription so nothing scheduled meanwhile waits for the next poll.
        """
        if self.dialect.name != "postgresql":
            return
        import asyncpg  # type: ignore[import-untyped]

        failures = 0
        while True:
            try:
                await self._listen_once(asyncpg, on_work, on_state)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                on_state(f"lost: {type(exc).__name__}: {exc}"[:300])
                failures += 1
                await asyncio.sleep(min(5.0, 0.05 * 2**failures))
            else:
                failures = 0

    async def _listen_once(
        self, asyncpg: Any, on_work: Callable[[], None], on_state: Callable[[str], None]
    ) -> None:
        """One subscription, until its connection drops or stops answering the keepalive."""
        dsn = self.listen_url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(
            dsn,
            timeout=self.pool.connect_timeout,
            server_settings={"application_name": f"zart-listener:{self.channel}"[:63]},
        )
        try:
            dropped = asyncio.Event()
            conn.add_termination_listener(lambda _conn: dropped.set())
            await conn.add_listener(self.channel, lambda *_args: on_work())
            on_state("listening")
            on_work()
            # A keepalive finds half-open connections that would otherwise wait forever.
            check_every = min(5.0, self.pool.statement_timeout / 3)
            while not dropped.is_set():
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(check_every):
                        await dropped.wait()
                async with asyncio.timeout(self.pool.statement_timeout):
                    await conn.fetchval("SELECT 1")
            raise ConnectionResetError("listener connection closed")
        finally:
            conn.terminate()

    # -- reading --------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRecord | None:
        async def body(conn: AsyncConnection) -> Row[Any] | None:
            return (await conn.execute(select(t).where(t.c.id == task_id))).one_or_none()

        row = await self.run(body)
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
            current_step=row.current_step,
            steps_completed=row.steps_completed,
            waiting_for=row.waiting_for,
            cancel_requested=bool(row.cancel_requested),
            deadline=row.deadline,
        )

    async def count_by_status(self) -> dict[str, int]:
        stmt = select(t.c.status, func.count()).group_by(t.c.status)

        async def body(conn: AsyncConnection) -> dict[str, int]:
            return {status: count for status, count in (await conn.execute(stmt)).all()}

        return await self.run(body)
