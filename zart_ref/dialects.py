"""What differs between PostgreSQL, MySQL/MariaDB and SQLite: clock, locking and engine setup.

The SQL backend asks its dialect for these pieces and keeps one implementation of every
operation; adding a database means adding a Dialect, not another backend.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import ColumnElement, Interval, event, func, literal, literal_column, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import PoolConfig
from .errors import ConfigError
from .hotpath import DriverFetch, reset_on_return
from .schema import UTCDateTime


class Dialect:
    """Base: the portable parts. Subclasses override what their database does differently."""

    name = "generic"
    # SQLite serializes writers; it cannot run several worker processes at full speed safely.
    concurrent_workers = True
    # MySQL and MariaDB < 11.5 have no UPDATE ... RETURNING.
    update_returning = True
    # Single-statement writes may run in autocommit (PostgreSQL): one round trip per write.
    autocommit_writes = False
    # How a transaction starts when the driver's implicit BEGIN will not do (SQLite).
    begin_sql: str | None = None
    # How the hot path runs a single statement on its own (hotpath.run_hot): "switch" the
    # connection to AUTOCOMMIT for it (PostgreSQL), "native" when the driver connection
    # always autocommits and transactions are begun explicitly (SQLite), None: a transaction.
    hot_autocommit: Literal["switch", "native"] | None = None
    # The driver's own execute-and-fetch for the hot path, where it beats a DBAPI cursor.
    driver_fetch: DriverFetch | None = None

    def now(self) -> ColumnElement[datetime]:
        """The database clock as an aware UTC instant."""
        raise NotImplementedError

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """The database clock plus ``seconds``."""
        raise NotImplementedError

    def now_plus_column(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        """The database clock plus a number of seconds that varies by row, for a bulk
        schedule that computes due times in its statement (not MySQL's: see _insert_new)."""
        raise NotImplementedError

    def engine_options(self, url: URL, pool: PoolConfig) -> dict[str, Any]:
        return {
            "pool_size": pool.max_connections,
            "max_overflow": 0,
            "pool_timeout": pool.acquire_timeout,
            "pool_pre_ping": False,
            # hotpath.reset_on_return resets instead, skipping transactions already ended.
            "pool_reset_on_return": None,
        }

    def create_engine(self, url: URL, pool: PoolConfig) -> AsyncEngine:
        engine = create_async_engine(url, **self.engine_options(url, pool))
        reset_on_return(engine)
        self.configure(engine, pool)
        return engine

    def configure(self, engine: AsyncEngine, pool: PoolConfig) -> None:
        """Per-connection setup (pragmas, session variables)."""

    def autocommit_engine(self, url: URL, pool: PoolConfig) -> AsyncEngine | None:
        """An engine for single statements where ``hot_autocommit`` cannot make them one statement."""
        return None

    @asynccontextmanager
    async def migration_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """Serialize concurrent migrations while the block runs."""
        yield

    async def check_server(self, conn: AsyncConnection) -> None:
        """Refuse a server that cannot keep the contract, with a clear reason."""

    def is_conflict(self, exc: DBAPIError) -> bool:
        """A lock conflict the whole transaction may simply be retried after."""
        return False

    async def create_namespace(self, conn: AsyncConnection, schema: str) -> None:
        """Create the schema (PostgreSQL) or database (MySQL) that holds the tables."""
        raise ConfigError(f"{self.name} has no schemas; use a separate database file instead")


class PostgresDialect(Dialect):
    name = "postgresql"
    autocommit_writes = True
    hot_autocommit = "switch"

    def now(self) -> ColumnElement[datetime]:
        # statement_timestamp(): the statement's own instant, even in a longer transaction.
        return func.statement_timestamp(type_=UTCDateTime)

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return self.now() + literal(timedelta(seconds=seconds), Interval())

    def now_plus_column(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        return self.now() + seconds * literal_column("interval '1 second'", Interval())

    def engine_options(self, url: URL, pool: PoolConfig) -> dict[str, Any]:
        options = super().engine_options(url, pool)
        options["connect_args"] = {
            "timeout": pool.connect_timeout,
            "command_timeout": pool.statement_timeout,
            "server_settings": {
                "application_name": "zart",
                "statement_timeout": str(int(pool.statement_timeout * 1000)),
                "idle_in_transaction_session_timeout": str(int(pool.statement_timeout * 1000)),
            },
        }
        return options

    @asynccontextmanager
    async def migration_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        # Released at commit: two `zart migrate` runs never create the same table at once.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('zart.migrate'))"))
        yield

    def is_conflict(self, exc: DBAPIError) -> bool:
        # deadlock_detected, serialization_failure
        return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")

    async def create_namespace(self, conn: AsyncConnection, schema: str) -> None:
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))


class SQLiteDialect(Dialect):
    """SQLite 3.35+ (RETURNING): WAL, a busy timeout and BEGIN IMMEDIATE for every transaction."""

    name = "sqlite"
    concurrent_workers = False
    # The write lock at the start: a claim's read and write are one atomic step.
    begin_sql = "BEGIN IMMEDIATE"
    # A lone UPDATE takes the write lock when it starts, as BEGIN IMMEDIATE would.
    hot_autocommit = "native"

    @staticmethod
    def driver_fetch(driver: Any, sql: str, parameters: Any) -> Awaitable[Sequence[Any]]:
        # One trip to aiosqlite's thread, where a DBAPI cursor takes four (cursor, execute,
        # fetch, close). Its errors are sqlite3's: the DBAPI's own exception classes.
        return cast(Awaitable[Sequence[Any]], driver.execute_fetchall(sql, parameters))

    _FORMAT = "%Y-%m-%d %H:%M:%f"

    def now(self) -> ColumnElement[datetime]:
        return func.strftime(self._FORMAT, "now", type_=UTCDateTime)

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return func.strftime(self._FORMAT, "now", f"{seconds:+.6f} seconds", type_=UTCDateTime)

    def now_plus_column(self, seconds: ColumnElement[float]) -> ColumnElement[datetime]:
        shift = func.printf("%+.6f seconds", seconds)
        return func.strftime(self._FORMAT, "now", shift, type_=UTCDateTime)

    def engine_options(self, url: URL, pool: PoolConfig) -> dict[str, Any]:
        options = super().engine_options(url, pool)
        options["connect_args"] = {"timeout": pool.statement_timeout}
        return options

    def configure(self, engine: AsyncEngine, pool: PoolConfig) -> None:
        busy_ms = int(pool.statement_timeout * 1000)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transactions into our own hands so every one can BEGIN IMMEDIATE.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(self.begin_sql)

    def is_conflict(self, exc: DBAPIError) -> bool:
        # SQLite skips the busy handler where waiting could deadlock (e.g. switching a new
        # file to WAL while another connection reads it): retrying the transaction is safe.
        message = str(exc.orig).lower()
        return "database is locked" in message or "database is busy" in message


class MySQLDialect(Dialect):
    """MySQL 8.0.1+ and MariaDB 10.6+: the first versions with SKIP LOCKED."""

    name = "mysql"
    update_returning = False

    def now(self) -> ColumnElement[datetime]:
        return func.utc_timestamp(6, type_=UTCDateTime)

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        micros = round(seconds * 1_000_000)
        return func.timestampadd(text("MICROSECOND"), micros, self.now(), type_=UTCDateTime)

    def engine_options(self, url: URL, pool: PoolConfig) -> dict[str, Any]:
        options = super().engine_options(url, pool)
        options["connect_args"] = {
            "charset": "utf8mb4",
            "connect_timeout": max(1, int(pool.connect_timeout)),
            # Sessions in UTC. Scheduling learns what it created from the INSERT IGNORE's row
            # count (see SQLBackend._insert_new), whatever the isolation level.
            "init_command": "SET time_zone = '+00:00'",
        }
        return options

    def autocommit_engine(self, url: URL, pool: PoolConfig) -> AsyncEngine | None:
        """One connection born in autocommit: on the work pool, whose connections begin a
        transaction implicitly, a statement alone is two (it, then COMMIT)."""
        one = replace(pool, max_connections=1, min_connections=0)
        engine = create_async_engine(
            url, isolation_level="AUTOCOMMIT", **self.engine_options(url, one)
        )
        reset_on_return(engine)
        return engine

    @asynccontextmanager
    async def migration_lock(self, conn: AsyncConnection) -> AsyncIterator[None]:
        got = (await conn.execute(text("SELECT GET_LOCK('zart.migrate', 60)"))).scalar()
        if got != 1:
            raise ConfigError("could not take the zart.migrate lock within 60 s")
        try:
            yield
        finally:
            await conn.execute(text("SELECT RELEASE_LOCK('zart.migrate')"))

    async def check_server(self, conn: AsyncConnection) -> None:
        version = str((await conn.execute(text("SELECT VERSION()"))).scalar())
        problem = skip_locked_problem(version)
        if problem:
            raise ConfigError(problem)

    def is_conflict(self, exc: DBAPIError) -> bool:
        # 1213 deadlock, 1205 lock wait timeout
        args: tuple[Any, ...] = getattr(exc.orig, "args", ())
        return len(args) > 0 and args[0] in (1213, 1205)

    async def create_namespace(self, conn: AsyncConnection, schema: str) -> None:
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        await conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4"))


def skip_locked_problem(version: str) -> str | None:
    """Why a MySQL/MariaDB server of ``version`` cannot run zart, or None."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    if "mariadb" in version.lower():
        if numbers < (10, 6):
            return (
                f"MariaDB {version} has no SKIP LOCKED; zart needs MariaDB 10.6 or newer "
                "(concurrent claims would block or double-claim)"
            )
        return None
    if numbers < (8, 0, 1):
        return (
            f"MySQL {version} has no SKIP LOCKED; zart needs MySQL 8.0.1 or newer "
            "(concurrent claims would block or double-claim)"
        )
    return None


def dialect_for(url: URL) -> Dialect:
    name = url.get_backend_name()
    if name == "postgresql":
        return PostgresDialect()
    if name == "sqlite":
        return SQLiteDialect()
    if name == "mysql":
        return MySQLDialect()
    raise ConfigError(f"no zart dialect for database {name!r} yet")
