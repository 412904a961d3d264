"""The tables every SQL backend shares; times are UTC instants from the database clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.types import TypeDecorator, TypeEngine

from .errors import PayloadError


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every dialect (TIMESTAMPTZ, DATETIME(6) in UTC, ISO text)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        if dialect.name == "mysql":
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise PayloadError(
                f"naive datetime {value.isoformat()} given; zart needs an aware datetime "
                "(e.g. datetime.now(timezone.utc)) to know which instant is meant"
            )
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        assert isinstance(moment, datetime)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


# JSON text: LONGTEXT on MySQL, whose TEXT stops at 64 KiB.
JSONText = Text().with_variant(mysql.LONGTEXT(), "mysql")

metadata = MetaData()

# One row per execution. `lock_token` is the fencing token minted by each claim; `locked_by`
# is diagnostic only and never decides ownership.
tasks = Table(
    "zart_tasks",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("payload", JSONText, nullable=False),
    Column("status", String(16), nullable=False),
    Column("run_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lock_token", String(64), nullable=True),
    Column("locked_by", String(255), nullable=True),
    Column("claimed_at", UTCDateTime, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    Column("result", JSONText, nullable=True),
    Column("error", JSONText, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    # Durable execution: progress for status(), what a suspended workflow waits for, a
    # cancellation the running worker must act on, and the execution's deadline.
    Column("current_step", String(255), nullable=True),
    Column("steps_completed", Integer, nullable=False, default=0),
    Column("waiting_for", String(255), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("deadline", UTCDateTime, nullable=True),
    # Covering index for the claim: due rows by status and time, id included for the lock.
    Index("zart_tasks_claim", "status", "run_at", "id"),
    Index("zart_tasks_lease", "status", "lease_expires_at"),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# A completed step's result, replayed instead of running the step again.
steps = Table(
    "zart_steps",
    metadata,
    Column("execution_id", String(255), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("result", JSONText, nullable=True),
    Column("completed_at", UTCDateTime, nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

# Events are durable and delivered once per (execution, name), before or during the wait.
events = Table(
    "zart_events",
    metadata,
    Column("execution_id", String(255), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("data", JSONText, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

SCHEDULED = "scheduled"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


def found_running() -> ColumnElement[bool]:
    """status = 'running' for rows found by their id, where it must not be how they are found.

    The status indexes hold an entry for every recent change of state (on PostgreSQL the dead
    ones stay until vacuum): a planner that answers ``id IN (...) AND status = 'running'``
    from them reads thousands of entries per statement during a drain, where the primary key
    reads a few. The expression keeps the test and hides it from index selection.
    """
    return (tasks.c.status + "") == RUNNING


def held_by(task_id: str, token: str) -> ColumnElement[bool]:
    """The row of ``task_id`` while the claim that minted ``token`` still holds it."""
    return (tasks.c.id == task_id) & (tasks.c.lock_token == token) & found_running()
