"""What differs between PostgreSQL, MySQL/MariaDB and SQLite: clock, locking and engine setup.

The SQL backend asks its dialect for these pieces and keeps one implementation of every
operation; adding a database means adding a Dialect, not another backend.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Interval, event, func, literal, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import PoolConfig
from .errors import ConfigError
from .schema import UTCDateTime


class Dialect:
    """Base: the portable parts. Subclasses override what their database does differently."""

    name = "generic"
    # SQLite serializes writers; it cannot run several worker processes at full speed safely.
    concurrent_workers = True

    def now(self) -> ColumnElement[datetime]:
        """The database clock as an aware UTC instant."""
        raise NotImplementedError

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """The database clock plus ``seconds``."""
        raise NotImplementedError

    def engine_options(self, url: URL, pool: PoolConfig) -> dict[str, Any]:
        return {
            "pool_size": pool.max_connections,
            "max_overflow": 0,
            "pool_timeout": pool.acquire_timeout,
            "pool_pre_ping": False,
        }

    def create_engine(self, url: URL, pool: PoolConfig) -> AsyncEngine:
        engine = create_async_engine(url, **self.engine_options(url, pool))
        self.configure(engine, pool)
        return engine

    def configure(self, engine: AsyncEngine, pool: PoolConfig) -> None:
        """Per-connection setup (pragmas, session variables)."""

    async def lock_migrations(self, conn: AsyncConnection) -> None:
        """Serialize concurrent migrations for the rest of this transaction."""

    async def create_namespace(self, conn: AsyncConnection, schema: str) -> None:
        """Create the schema (PostgreSQL) or database (MySQL) that holds the tables."""
        raise ConfigError(f"{self.name} has no schemas; use a separate database file instead")


class PostgresDialect(Dialect):
    name = "postgresql"

    def now(self) -> ColumnElement[datetime]:
        # statement_timestamp(): the statement's own instant, even in a longer transaction.
        return func.statement_timestamp(type_=UTCDateTime)

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return self.now() + literal(timedelta(seconds=seconds), Interval())

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

    async def lock_migrations(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('zart.migrate'))"))

    async def create_namespace(self, conn: AsyncConnection, schema: str) -> None:
        quoted = conn.dialect.identifier_preparer.quote_identifier(schema)
        await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))


class SQLiteDialect(Dialect):
    name = "sqlite"
    concurrent_workers = False
    _FORMAT = "%Y-%m-%d %H:%M:%f"

    def now(self) -> ColumnElement[datetime]:
        return func.strftime(self._FORMAT, "now", type_=UTCDateTime)

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        return func.strftime(self._FORMAT, "now", f"{seconds:+.6f} seconds", type_=UTCDateTime)

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
            # The write lock at the start: a claim's read and write are one atomic step.
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def dialect_for(url: URL) -> Dialect:
    name = url.get_backend_name()
    if name == "postgresql":
        return PostgresDialect()
    if name == "sqlite":
        return SQLiteDialect()
    raise ConfigError(f"no zart dialect for database {name!r} yet")
