"""The hot path: claims and group completions on the pooled connection's own DBAPI cursor.

SQLAlchemy Core spends about 0.25 ms of CPU per statement on its execution context, events,
schema translation and result objects: more than everything else a no-op task costs. The few
statements a worker runs thousands of times a second are compiled once per shape (schema
already translated) and run on the DBAPI connection that SQLAlchemy's own pool hands out,
with the column types' own bind and result processors. Errors are wrapped as SQLAlchemy wraps
them, so SQLBackend keeps one rule for conflicts, retries and unavailability.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.types import DateTime, TypeDecorator, TypeEngine
from sqlalchemy.util import await_only

T = TypeVar("T")
Processor = Callable[[Any], Any] | None
# A driver's own one-call "execute and fetch everything", where it saves round trips to the
# driver's thread (aiosqlite): (driver connection, sql, parameters) -> awaitable rows.
DriverFetch = Callable[[Any, str, Any], Awaitable[Sequence[Any]]]
# Set on a pooled connection whose transaction the hot path ended itself: the pool's reset
# (a ROLLBACK round trip on MySQL) would be one statement too many.
_ENDED = "zart.transaction_ended"


@dataclass(frozen=True)
class Compiled:
    """One statement rendered for one dialect: text, parameter order, type processors."""

    sql: str
    names: tuple[str, ...]  # positional order; empty for a named paramstyle
    fixed: dict[str, Any]  # values compiled into the statement (literals, lease seconds)
    binds: dict[str, Processor]
    results: tuple[Processor, ...]
    # Result columns whose processed values are immutable (times): a claim's rows share
    # their claimed_at and lease_expires_at, parsed once per statement instead of per row.
    shared: tuple[bool, ...]

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        merged = {**self.fixed, **values}
        out = {
            name: process(merged[name]) if process else merged[name]
            for name, process in self.binds.items()
        }
        return [out[name] for name in self.names] if self.names else out

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        procs = self.results
        if len(raw) > 1 and any(self.shared):
            procs = tuple(
                _once_per_value(p) if s else p for p, s in zip(procs, self.shared, strict=True)
            )
        return [tuple(p(v) if p else v for p, v in zip(procs, row, strict=True)) for row in raw]


def _once_per_value(process: Processor) -> Processor:
    """``process`` remembering its results for the length of one statement's rows."""
    if process is None:
        return None
    seen: dict[Any, Any] = {}

    def remembered(value: Any) -> Any:
        try:
            return seen[value]
        except KeyError:
            result = seen[value] = process(value)
            return result

    return remembered


def compile_statement(dialect: SADialect, stmt: ClauseElement, schema: str | None) -> Compiled:
    """Render ``stmt`` once, with the schema translated, for ``dialect``'s own DBAPI driver."""
    translate = {None: schema} if schema else None
    compiled: Any = stmt.compile(
        dialect=dialect, schema_translate_map=translate, render_schema_translate=bool(translate)
    )
    binds = {
        name: bind.type.dialect_impl(dialect).bind_processor(dialect)
        for name, bind in compiled.binds.items()
    }
    fixed = {
        name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
    }
    returned = getattr(stmt, "exported_columns", ())
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None) for column in returned
    )
    shared = tuple(_is_time(column.type) for column in returned)
    positions = tuple(compiled.positiontup or ())
    return Compiled(compiled.string, positions, fixed, binds, results, shared)


def _is_time(kind: TypeEngine[Any]) -> bool:
    base = kind.impl_instance if isinstance(kind, TypeDecorator) else kind
    return isinstance(base, DateTime)


class HotConnection:
    """One pooled DBAPI connection for the length of one transaction (or one statement)."""

    def __init__(self, fairy: PoolProxiedConnection, fetch: DriverFetch | None) -> None:
        self._dbapi: Any = fairy.dbapi_connection
        self._driver = fairy.driver_connection
        self._fetch = fetch
        self.last_sql = ""

    def execute(self, stmt: Compiled, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run ``stmt``; its rows (none for a statement that returns nothing)."""
        return stmt.rows(self.execute_raw(stmt.sql, stmt.parameters(values)))

    def execute_raw(self, sql: str, parameters: Any = ()) -> list[Any]:
        self.last_sql = sql
        if self._fetch is not None:
            return list(await_only(self._fetch(self._driver, sql, parameters)))
        cursor = self._dbapi.cursor()
        try:
            cursor.execute(sql, parameters)
            return list(cursor.fetchall()) if cursor.description else []
        finally:
            cursor.close()


def run_hot(
    engine: AsyncEngine,
    body: Callable[[HotConnection], T],
    *,
    begin: str | None,
    autocommit: Literal["switch", "native"] | None,
    fetch: DriverFetch | None = None,
) -> T:
    """Run ``body`` on a pooled connection; call it inside ``greenlet_spawn``.

    ``autocommit``: every statement commits on its own (one round trip each), with the
    connection switched to AUTOCOMMIT for the call or already in it (``native``). Otherwise
    one transaction, opened by ``begin`` where the dialect needs an explicit one (SQLite's
    BEGIN IMMEDIATE), committed at the end and rolled back on any error.
    """
    dialect = engine.dialect
    error = dialect.loaded_dbapi.Error
    try:
        fairy: PoolProxiedConnection = engine.sync_engine.pool.connect()
    except error as exc:
        # A new connection failed (the pool opens them lazily): wrapped as Engine.connect does.
        raise DBAPIError.instance(None, None, exc, error, dialect=dialect) from exc
    dbapi: Any = fairy.dbapi_connection
    conn = HotConnection(fairy, fetch)
    try:
        if autocommit == "switch":
            dialect.set_isolation_level(dbapi, "AUTOCOMMIT")
        elif autocommit is None and begin:
            conn.execute_raw(begin)
        try:
            result = body(conn)
            if not autocommit:
                dbapi.commit()
        except Exception:
            if not autocommit and fairy.is_valid:
                try:
                    dbapi.rollback()
                except Exception:
                    fairy.invalidate()  # broken: the pool opens a fresh one
            raise
        fairy.info[_ENDED] = True
        return result
    except Exception as exc:
        if not isinstance(exc, error):
            raise
        invalidated = dialect.is_disconnect(exc, dbapi, None)
        if invalidated:
            fairy.invalidate(exc)
        raise DBAPIError.instance(
            conn.last_sql, None, exc, error, connection_invalidated=invalidated, dialect=dialect
        ) from exc
    except BaseException:
        # Cancelled mid-statement: the connection's state is unknown, as SQLAlchemy judges too.
        fairy.invalidate()
        raise
    finally:
        if autocommit == "switch" and fairy.is_valid:
            dialect.reset_isolation_level(dbapi)
        fairy.close()


def reset_on_return(engine: AsyncEngine) -> None:
    """The pool's reset, without the ROLLBACK after a transaction that has already ended.

    Needs the engine's ``pool_reset_on_return=None``: this listener does the reset instead.
    """

    @event.listens_for(engine.sync_engine, "reset")
    def _reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        ended = record.info.pop(_ENDED, False)
        if state.transaction_was_reset or ended or not state.asyncio_safe:
            return
        dbapi_connection.rollback()
