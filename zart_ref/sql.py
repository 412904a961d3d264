"""The SQL backend: every operation once, in SQLAlchemy Core, with dialect-specific pieces."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    Text,
    Update,
    bindparam,
    case,
    column,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Row
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.util import greenlet_spawn

from . import payload as payloads
from .backend import ClaimedTask, Lease, NewTask, Pending, TaskRecord, validate_new
from .batching import GroupCommit
from .config import PoolConfig
from .dialects import Dialect, dialect_for
from .errors import DatabaseUnavailable, LeaseLost, ZartError
from .hotpath import Compiled, HotConnection, compile_statement, run_hot
from .pglisten import PgListener
from .schema import (
    COMPLETED,
    FAILED,
    RUNNING,
    SCHEDULED,
    JSONText,
    UTCDateTime,
    found_running,
    held_by,
    metadata,
    tasks,
)
from .sql_durable import DurableSQL
from .urls import libpq_dsn, normalize_url, redact

_INSERT_CHUNK = 1000
# PostgreSQL sends each column as one array: a chunk is bounded by size, not parameters.
_UNNEST_CHUNK = 50_000
_UNNESTED = ("id", "name", "payload", "due_at", "delay")
# Payload, id and name characters in one statement at most: PostgreSQL refuses a message
# over 1 GB, and a chunk of large payloads would reach that long before its row limit.
_CHUNK_CHARS = 64 * 1024 * 1024
_CONFLICT_RETRIES = 8
# Completions written by one statement at most (a worker holds max_concurrent_tasks).
_MAX_GROUP = 64
t = tasks
T = TypeVar("T")
S = TypeVar("S")


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
        self._single = self.dialect.autocommit_engine(self.url, self.pool)
        self._listener: PgListener | None = None
        self.engine: AsyncEngine = (
            engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        )
        self._server_checked = False
        self._autocommit: AsyncEngine | None = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.dialect.autocommit_writes
            else None
        )
        # SQLite has one writer at a time: transactions of this process queue here instead of
        # in the busy handler, which sleeps in steps of milliseconds.
        self._writer = asyncio.Lock() if not self.dialect.concurrent_workers else None
        # Hot-path statements, built once per shape and run with bound values.
        self._statements: dict[tuple[Any, ...], Compiled] = {}
        self._completions: GroupCommit[str, tuple[str, str], datetime] = GroupCommit(
            self._complete_group,
            timeout=self._call_limit,
            max_batch=_MAX_GROUP,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r}, schema={self.schema!r})"

    # -- plumbing -------------------------------------------------------------------------

    @property
    def _call_limit(self) -> float:
        """How long one database call may take in all: a connection, then its statements."""
        return self.pool.statement_timeout + self.pool.acquire_timeout

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

        async def attempt() -> T:
            if engine is not None:
                async with engine.connect() as conn:
                    return await body(conn)
            async with self.engine.begin() as conn:
                return await body(conn)

        return await self._retrying(attempt)

    async def run_hot(
        self, body: Callable[[HotConnection], T], *, single_statement: bool = False
    ) -> T:
        """``run`` for the hot path (claims, group completions): ``body`` gets a DBAPI-level
        connection and compiled statements (see hotpath.py), all in one greenlet."""
        engine = self.engine
        autocommit = self.dialect.hot_autocommit if single_statement else None
        if single_statement and autocommit is None and self._single is not None:
            engine, autocommit = self._single, "native"
        begin = self.dialect.begin_sql
        fetch = self.dialect.driver_fetch
        return await self._retrying(
            lambda: greenlet_spawn(
                run_hot, engine, body, begin=begin, autocommit=autocommit, fetch=fetch
            )
        )

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        limit = self._call_limit
        for tries in range(1, _CONFLICT_RETRIES + 1):
            try:
                async with asyncio.timeout(limit):
                    if not self._server_checked:
                        await self._prepare()
                    if self._writer is None:
                        return await attempt()
                    async with self._writer:
                        return await attempt()
            except _Raced:
                if tries == _CONFLICT_RETRIES:
                    raise
                await _conflict_backoff(tries)
            except DBAPIError as exc:
                if self.dialect.is_conflict(exc) and tries < _CONFLICT_RETRIES:
                    await _conflict_backoff(tries)
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
            if self._single is not None:
                # Opened now, not on the first idle poll (MySQL's first connect is a dozen
                # statements).
                await stack.enter_async_context(self._single.connect())
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
        if self._single is not None:
            await self._single.dispose()

    # -- scheduling -----------------------------------------------------------------------

    async def schedule(self, new: Sequence[NewTask]) -> list[bool]:
        # Inserted in id order: concurrent schedules of overlapping ids lock their rows in
        # one order and cannot deadlock.
        new = list(new)  # any iterable, read once
        unique = sorted(validate_new(new), key=lambda task: task.id)
        rows = [
            {
                "id": task.id,
                "name": task.name,
                "payload": payloads.encode(task.payload, what=f"payload of task {task.id!r}"),
                # An explicit instant, or None: due ``delay`` seconds from now (DB clock).
                "due_at": task.run_at,
                "delay": task.delay,
            }
            for task in unique
        ]
        most = _UNNEST_CHUNK if self.dialect.name == "postgresql" else _INSERT_CHUNK

        async def body(conn: AsyncConnection) -> set[str]:
            created: set[str] = set()
            for chunk in _chunks(rows, most, _CHUNK_CHARS):
                created |= await self._insert_new(conn, chunk)
            if created:
                await self._notify(conn)
            return created

        created = await self.run(body)
        # A repeated id within one call: only its first task can have been created.
        flags, seen = [], set()
        for task in new:
            flags.append(task.id in created and task.id not in seen)
            seen.add(task.id)
        return flags

    async def _insert_new(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert rows whose id is new (one statement, many rows); returns the ids inserted.

        Due times come from the database clock: the row's own ``due_at``, or ``delay``
        seconds from now.
        """
        name = self.dialect.name
        shared = self._shared_delay(rows)
        # Rows that share their delay (the common bulk) bind no due time of their own.
        keys = _UNNESTED if shared is None else _UNNESTED[:3]
        if name == "postgresql":
            columns = {key: [row[key] for row in rows] for key in keys}
            inserted: list[str] | None = (
                await conn.execute(self._unnest_insert(keys, shared), columns)
            ).scalar()
            return set(inserted or [])
        if name == "sqlite":
            own: dict[str, Any] = {"due_at": bindparam("due_at", UTCDateTime)}
            own["delay"] = bindparam("delay", Float)
            stamps = self._stamps(shared, own)
            stmt = sqlite_insert(t).values(stamps).on_conflict_do_nothing(index_elements=[t.c.id])
            bound = [{key: row[key] for key in keys} for row in rows]
            return set((await conn.execute(stmt.returning(t.c.id), bound)).scalars())
        # MySQL has no INSERT ... RETURNING. A plain read says which ids exist; the INSERT
        # IGNORE then locks its rows one by one in id order. (Locking the absent ids first
        # took gap locks: two schedules into one gap deadlocked on their inserts.) Fewer rows
        # inserted than were absent: a concurrent schedule committed some meanwhile, and the
        # transaction runs again, reading them.
        ids = [row["id"] for row in rows]
        present = set((await conn.execute(select(t.c.id).where(t.c.id.in_(ids)))).scalars())
        fresh = [row for row in rows if row["id"] not in present]
        if fresh:
            # The clock read once and bound, so that the driver sends one multi-row INSERT
            # (aiomysql batches only VALUES made of plain parameters).
            at: datetime = (await conn.execute(select(self.dialect.now()))).scalar_one()
            values = [
                {
                    "id": row["id"],
                    "name": row["name"],
                    "payload": row["payload"],
                    "run_at": row["due_at"] or at + timedelta(seconds=row["delay"]),
                    "status": SCHEDULED,
                    "attempts": 0,
                    "created_at": at,
                    "updated_at": at,
                }
                for row in fresh
            ]
            written = await conn.execute(insert(t).prefix_with("IGNORE"), values)
            if written.rowcount != len(fresh):
                raise _Raced(f"another schedule created some of these {len(fresh)} ids meanwhile")
        return {row["id"] for row in fresh}

    @staticmethod
    def _shared_delay(rows: list[dict[str, Any]]) -> float | None:
        """The delay every row of a chunk is due after, or None when rows give instants or
        different delays (then each row's due time is its own)."""
        first = rows[0]["delay"]
        if all(row["due_at"] is None and row["delay"] == first for row in rows):
            return float(first)
        return None

    def _stamps(self, shared: float | None, own: Any) -> dict[str, Any]:
        """The columns a new row gets from the statement rather than from the caller: due
        ``shared`` seconds from now, or (None) at its own ``due_at`` or after its own ``delay``
        (``own``: the row's columns or parameters by name)."""
        now = self.dialect.now()
        run_at: ColumnElement[Any]
        if shared is None:
            due_after = self.dialect.now_plus_column(own["delay"])
            run_at = func.coalesce(own["due_at"], due_after, type_=UTCDateTime)
        else:
            run_at = self.dialect.now_plus(shared) if shared else now
        return {
            "status": literal(SCHEDULED, String()),
            "attempts": literal(0, Integer()),
            "run_at": run_at,
            "created_at": now,
            "updated_at": now,
        }

    def _unnest_insert(self, keys: tuple[str, ...], shared: float | None) -> Select[Any]:
        """PostgreSQL: one INSERT ... SELECT FROM unnest(arrays), one bound array per column,
        the new ids back as one array: a bulk schedule is one statement and one row."""
        types: dict[str, Any] = {
            "id": String(),
            "name": String(),
            "payload": Text(),
            "due_at": UTCDateTime(),
            "delay": Float(),
        }
        arrays: list[Any] = [bindparam(key, type_=ARRAY(types[key])) for key in keys]
        rows = (
            func.unnest(*arrays)
            .table_valued(*[column(key, types[key]) for key in keys])
            .render_derived("new")
        )
        stamps = self._stamps(shared, rows.c)
        values = {"id": rows.c.id, "name": rows.c.name, "payload": rows.c.payload, **stamps}
        chosen = select(*values.values())
        stmt = pg_insert(t).from_select(list(values), chosen)
        inserted = stmt.on_conflict_do_nothing(index_elements=[t.c.id]).returning(t.c.id)
        ids = inserted.cte("inserted")
        return select(func.array_agg(ids.c.id, type_=ARRAY(String())))

    # -- claiming -------------------------------------------------------------------------

    def _hot(self, key: tuple[Any, ...], build: Callable[[], ClauseElement]) -> Compiled:
        """A hot-path statement: built and compiled once per shape, values bound per run."""
        stmt = self._statements.get(key)
        if stmt is None:
            stmt = self._statements[key] = compile_statement(
                self.engine.dialect, build(), self.schema
            )
        return stmt

    def _is_due(self) -> ColumnElement[bool]:
        return (t.c.status == SCHEDULED) & (t.c.run_at <= self.dialect.now())

    def _lease_expired(self) -> ColumnElement[bool]:
        return (t.c.status == RUNNING) & (t.c.lease_expires_at < self.dialect.now())

    def _due(self, limit: int | ColumnElement[int]) -> Select[tuple[str]]:
        return select(t.c.id).where(self._is_due()).order_by(t.c.run_at, t.c.id).limit(limit)

    def _pending_select(self) -> Compiled:
        """Two index probes in one read: a due task exists, an expired lease exists."""

        def build() -> Select[bool, bool]:
            due = exists().where(self._is_due()).label("due")
            return select(due, exists().where(self._lease_expired()).label("expired"))

        return self._hot(("pending",), build)

    async def pending(self) -> Pending:
        stmt = self._pending_select()
        # Over the LISTEN session while it is up: the same read keeps it alive (pglisten.py).
        raw = None
        if self._listener is not None:
            raw = await self._listener.fetch(stmt.sql, list(stmt.parameters({})))
        if raw is not None:
            rows = stmt.rows(raw)
        else:
            rows = await self.run_hot(lambda conn: conn.execute(stmt, {}), single_statement=True)
        due, expired = rows[0]
        return Pending(due=bool(due), expired=bool(expired))

    def _claim_values(
        self, worker_id: str | ColumnElement[str], token: str | ColumnElement[str], lease: float
    ) -> dict[str, Any]:
        now = self.dialect.now()
        return {
            "status": RUNNING,
            "lock_token": token,
            "locked_by": worker_id,
            "attempts": t.c.attempts + 1,
            "claimed_at": now,
            "lease_expires_at": self.dialect.now_plus(lease),
            "updated_at": now,
        }

    _CLAIMED = (t.c.id, t.c.name, t.c.payload, t.c.attempts, t.c.claimed_at, t.c.lease_expires_at)

    @staticmethod
    def new_token() -> str:
        """A fresh fencing token: one per claim, never reused, never a worker's name."""
        return _tokens.next()

    def _claim_update(self, lease_seconds: float) -> Compiled:
        """PostgreSQL, SQLite: the claim as one UPDATE ... RETURNING.

        Binds ``worker_id``, ``token`` and ``limit``. On PostgreSQL a materialized CTE locks
        the rows once (`IN (subselect LIMIT n SKIP LOCKED)` may be re-run by the planner and
        return more than ``limit`` rows); on SQLite BEGIN IMMEDIATE holds the only write lock.
        """

        def build() -> Update:
            due = self._due(bindparam("limit", type_=Integer))
            where: ColumnElement[bool]
            if self.dialect.name == "postgresql":
                picked = due.with_for_update(skip_locked=True).cte("picked")
                where = t.c.id == picked.prefix_with("MATERIALIZED").c.id
            else:
                where = t.c.id.in_(due.scalar_subquery())
            values = self._claim_values(_text("worker_id"), _text("token"), lease_seconds)
            return update(t).where(where).values(values).returning(*self._CLAIMED)

        return self._hot(("claim", lease_seconds), build)

    def _claim_lock(self) -> Compiled:
        """MySQL: lock the due rows (binds ``limit``), read them and the database clock."""

        def build() -> Select[Any]:
            due = self._due(bindparam("limit", type_=Integer))
            extra = (t.c.name, t.c.payload, t.c.attempts, self.dialect.now().label("now"))
            return due.add_columns(*extra).with_for_update(skip_locked=True)

        return self._hot(("claim_lock",), build)

    def _claim_mark(self, count: int) -> Compiled:
        """MySQL: mark the ``count`` locked rows ``id<i>`` running under ``token`` from ``now``."""

        def build() -> Update:
            now = bindparam("now", type_=UTCDateTime)
            values = {
                **self._claim_values(_text("worker_id"), _text("token"), 0),
                "claimed_at": now,
                "lease_expires_at": bindparam("expires", type_=UTCDateTime),
                "updated_at": now,
            }
            ids = [_text(f"id{i}") for i in range(count)]
            return update(t).where(t.c.id.in_(ids)).values(values)

        return self._hot(("claim_mark", count), build)

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        token = self.new_token()
        binds = {"worker_id": worker_id, "token": token, "limit": limit}
        if not self.dialect.update_returning:
            return await self.run_hot(lambda conn: self._claim_mysql(conn, binds, lease_seconds))
        stmt = self._claim_update(lease_seconds)
        rows = await self.run_hot(lambda conn: conn.execute(stmt, binds), single_statement=True)
        return [self._claimed(row, token) for row in rows]

    @staticmethod
    def _claimed(row: Sequence[Any], token: str) -> ClaimedTask:
        """A claimed task from a row of ``_CLAIMED`` (after the claim's own UPDATE)."""
        task_id, name, payload, attempt, claimed_at, expires = row
        return ClaimedTask(
            task_id, name, payloads.decode(payload), token, attempt, claimed_at, expires
        )

    def _claim_mysql(
        self, conn: HotConnection, binds: dict[str, Any], lease_seconds: float
    ) -> list[ClaimedTask]:
        """Lock, then mark: the lease runs from the database time the lock read returned."""
        rows = conn.execute(self._claim_lock(), binds)
        if not rows:
            return []
        now: datetime = rows[0][-1]
        expires = now + timedelta(microseconds=round(lease_seconds * 1_000_000))
        marks = {**binds, **{f"id{i}": row[0] for i, row in enumerate(rows)}}
        conn.execute(self._claim_mark(len(rows)), marks | {"now": now, "expires": expires})
        token = binds["token"]
        return [
            ClaimedTask(task_id, name, payloads.decode(payload), token, attempts + 1, now, expires)
            for task_id, name, payload, attempts, _ in rows
        ]

    # -- fenced writes --------------------------------------------------------------------

    async def _fenced_update(
        self, lease: Lease, operation: str, values: dict[str, Any], *, notify: bool = False
    ) -> datetime:
        stmt = update(t).where(held_by(lease.task_id, lease.token)).values(values)

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
        held = found_running() & tuple_(t.c.id, t.c.lock_token).in_(
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
        """Group-committed: completions waiting at the same time share one fenced statement."""
        encoded = self.encode_result(lease, result)
        try:
            stamp = await self._completions.submit(lease.task_id, (lease.token, encoded))
        except TimeoutError as exc:
            raise self._unavailable(exc) from exc
        if stamp is None:
            raise LeaseLost(lease.task_id, lease.token, "complete")
        return stamp

    def _complete_update(self, count: int, *, fenced: bool = True) -> Compiled:
        """Complete ``count`` tasks (binds ``id<i>``, ``token<i>``, ``result<i>``), each row
        only while it is running under its own token. Unfenced: MySQL, whose rows were
        locked and checked just before, and which stamps them with the bound ``now``."""

        def build() -> Update:
            ids = [_text(f"id{i}") for i in range(count)]
            result = case(
                *[(t.c.id == ids[i], bindparam(f"result{i}", type_=JSONText)) for i in range(count)]
            )
            values = {**self._finish(COMPLETED), "result": result}
            if not fenced:
                now = bindparam("now", type_=UTCDateTime)
                values |= {"updated_at": now, "finished_at": now}
                return update(t).where(t.c.id.in_(ids)).values(values)
            held = or_(
                *[(t.c.id == ids[i]) & (t.c.lock_token == _text(f"token{i}")) for i in range(count)]
            )
            stmt = update(t).where(found_running(), t.c.id.in_(ids), held).values(values)
            return stmt.returning(t.c.id, t.c.updated_at)

        return self._hot(("complete", count, fenced), build)

    def _complete_lock(self, count: int) -> Compiled:
        """MySQL: lock the running rows among ``id<i>`` and read their tokens and the clock."""

        def build() -> Select[Any]:
            ids = [_text(f"id{i}") for i in range(count)]
            columns = (t.c.id, t.c.lock_token, self.dialect.now().label("now"))
            running = select(*columns).where(found_running(), t.c.id.in_(ids))
            return running.with_for_update()

        return self._hot(("complete_lock", count), build)

    async def _complete_group(self, items: dict[str, tuple[str, str]]) -> dict[str, datetime]:
        """One flush of the group commit: the tasks still held by their tokens, completed."""
        if self.dialect.update_returning:
            stmt = self._complete_update(len(items))

            def body(conn: HotConnection) -> dict[str, datetime]:
                return dict(conn.execute(stmt, _group_binds(items)))  # (id, updated_at) rows

            return await self.run_hot(body, single_statement=True)

        def locked_body(conn: HotConnection) -> dict[str, datetime]:
            locked = conn.execute(self._complete_lock(len(items)), _group_binds(items))
            held = {tid: items[tid] for tid, token, _ in locked if token == items[tid][0]}
            if not held:
                return {}
            now: datetime = locked[0][-1]
            stmt = self._complete_update(len(held), fenced=False)
            conn.execute(stmt, {**_group_binds(held), "now": now})
            return dict.fromkeys(held, now)

        return await self.run_hot(locked_body)

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
        expired = self._lease_expired()

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

        # One UPDATE ... RETURNING where the dialect has it: autocommit, one statement idle.
        return await self.run(body, single_statement=self.dialect.update_returning)

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
        """LISTEN on a dedicated asyncpg connection outside the pool (see pglisten.py), which
        also carries this backend's idle polls; returns at once on other databases."""
        if self.dialect.name != "postgresql":
            return
        listener = PgListener(
            libpq_dsn(self.listen_url),
            self.channel,
            connect_timeout=self.pool.connect_timeout,
            statement_timeout=self.pool.statement_timeout,
        )
        self._listener = listener
        try:
            await listener.run(on_work, on_state)
        finally:
            self._listener = None

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


def _text(name: str) -> ColumnElement[str]:
    """A named string parameter of a cached statement."""
    return bindparam(name, type_=String)


def _group_binds(items: dict[str, tuple[str, str]]) -> dict[str, str]:
    """The values of a group completion: ``id<i>``, ``token<i>`` and ``result<i>``."""
    binds: dict[str, str] = {}
    for i, (task_id, (token, result)) in enumerate(items.items()):
        binds |= {f"id{i}": task_id, f"token{i}": token, f"result{i}": result}
    return binds


def _chunks(rows: list[dict[str, Any]], most: int, chars: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive runs of at most ``most`` rows and, but for a lone larger row, ``chars``
    characters of id, name and payload."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        length = len(row["id"]) + len(row["name"]) + len(row["payload"])
        if chunk and (len(chunk) == most or size + length > chars):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += length
    if chunk:
        yield chunk


async def _conflict_backoff(tries: int) -> None:
    """Jittered: transactions that collided once must not run again in step."""
    await asyncio.sleep(random.uniform(0, 0.01 * 2**tries))


class _Raced(ZartError):
    """A transaction lost a race it can only learn of after its writes: run it again."""


class _Tokens:
    """Fencing tokens: a random prefix per process and a counter. Unique like uuid4, without
    the system call per claim that makes a busy worker wait for the GIL to come back."""

    def __init__(self) -> None:
        self._pid = -1

    def next(self) -> str:
        # A forked child draws its own prefix, whether or not the fork ran Python's hooks
        # (uWSGI's prefork does not): the pid says.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._prefix = uuid.uuid4().hex[:16]
            self._count = itertools.count()
        return f"{self._prefix}{next(self._count):016x}"


_tokens = _Tokens()
