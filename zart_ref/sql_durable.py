"""Durable-execution storage of the SQL backend: steps, suspensions, events, cancellation.

A mixin of SQLBackend, kept apart so the task queue (claim, lease, complete) reads on its own.
Every write on behalf of a running execution is fenced by its claim's token, like complete().
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Table, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from . import payload as payloads
from .backend import Lease, TaskRecord
from .errors import LeaseLost
from .schema import CANCELLED, SCHEDULED, TERMINAL, events, held_by, steps, tasks

if TYPE_CHECKING:
    from .dialects import Dialect

T = TypeVar("T")
t = tasks


class DurableSQL:
    """Steps, sleeps, events and cancellation for SQLBackend (see its ``run``)."""

    dialect: Dialect

    if TYPE_CHECKING:

        async def run(
            self, body: Callable[[AsyncConnection], Awaitable[T]], *, single_statement: bool = False
        ) -> T: ...

        async def _notify(self, conn: AsyncConnection) -> None: ...

        def _back_to_scheduled(self, **extra: Any) -> dict[str, Any]: ...

        async def _fenced_update(
            self, lease: Lease, operation: str, values: dict[str, Any], *, notify: bool = False
        ) -> datetime: ...

        def _finish(self, status: str) -> dict[str, Any]: ...

        async def get(self, task_id: str) -> TaskRecord | None: ...

    async def _insert_once(self, conn: AsyncConnection, table: Table, row: dict[str, Any]) -> bool:
        """Insert ``row`` unless its key exists; True when this call inserted it."""
        if self.dialect.name == "postgresql":
            stmt: Any = pg_insert(table).values(row).on_conflict_do_nothing()
        elif self.dialect.name == "sqlite":
            stmt = sqlite_insert(table).values(row).on_conflict_do_nothing()
        else:
            stmt = insert(table).values(row).prefix_with("IGNORE")
        return bool((await conn.execute(stmt)).rowcount == 1)

    async def _hold(self, conn: AsyncConnection, lease: Lease, operation: str) -> None:
        """Lock the execution's row while our token holds it, or raise LeaseLost."""
        held = held_by(lease.task_id, lease.token)
        if (await conn.execute(select(t.c.id).where(held).with_for_update())).first() is None:
            raise LeaseLost(lease.task_id, lease.token, operation)

    # -- steps ------------------------------------------------------------------------------

    async def get_step(self, execution_id: str, name: str) -> tuple[bool, Any]:
        """(found, result) of a completed step."""
        query = select(steps.c.result).where(
            steps.c.execution_id == execution_id, steps.c.name == name
        )

        async def body(conn: AsyncConnection) -> tuple[bool, Any]:
            row = (await conn.execute(query)).first()
            return (False, None) if row is None else (True, payloads.decode(row.result))

        return await self.run(body)

    async def save_step(self, lease: Lease, name: str, result: Any) -> None:
        """Persist a completed step, fenced; a step saved before (a replay) keeps its result."""
        encoded = payloads.encode(result, what=f"result of step {name!r}")

        async def body(conn: AsyncConnection) -> None:
            await self._hold(conn, lease, f"step {name}")
            row = {
                "execution_id": lease.task_id,
                "name": name,
                "result": encoded,
                "completed_at": self.dialect.now(),
            }
            if await self._insert_once(conn, steps, row):
                progress = {"steps_completed": t.c.steps_completed + 1, "current_step": None}
                await conn.execute(update(t).where(t.c.id == lease.task_id).values(progress))

        await self.run(body)

    async def start_step(self, lease: Lease, name: str) -> bool:
        """Record the step now running; False when cancellation was requested (start nothing)."""

        async def body(conn: AsyncConnection) -> bool:
            await self._hold(conn, lease, f"step {name}")
            cancelled = select(t.c.cancel_requested).where(t.c.id == lease.task_id)
            if (await conn.execute(cancelled)).scalar():
                return False
            await conn.execute(update(t).where(t.c.id == lease.task_id).values(current_step=name))
            return True

        return await self.run(body)

    # -- suspension, deadline, cancellation -------------------------------------------------

    async def suspend(
        self, lease: Lease, run_at: datetime | None, delay: float, waiting_for: str | None
    ) -> datetime:
        """Back to scheduled until ``run_at`` (or DB now + ``delay``), holding no worker slot and
        not counted as an attempt. An event delivered while the run was deciding to wait for
        it wakes the execution at once instead."""

        async def body(conn: AsyncConnection) -> datetime:
            await self._hold(conn, lease, "suspend")
            wake: Any = run_at if run_at is not None else self.dialect.now_plus(delay)
            waiting = waiting_for
            if waiting_for is not None:
                arrived = select(events.c.name).where(
                    events.c.execution_id == lease.task_id, events.c.name == waiting_for
                )
                if (await conn.execute(arrived.with_for_update())).first() is not None:
                    wake, waiting = self.dialect.now(), None
            values = self._back_to_scheduled(
                attempts=t.c.attempts - 1, run_at=wake, waiting_for=waiting, current_step=None
            )
            await conn.execute(update(t).where(t.c.id == lease.task_id).values(values))
            written = select(t.c.updated_at).where(t.c.id == lease.task_id)
            stamp = (await conn.execute(written)).scalar_one()
            assert isinstance(stamp, datetime)
            return stamp

        return await self.run(body)

    async def ensure_deadline(self, lease: Lease, seconds: float) -> datetime:
        """The execution's deadline, set to DB now + ``seconds`` on its first run."""

        async def body(conn: AsyncConnection) -> datetime:
            await self._hold(conn, lease, "deadline")
            unset = (t.c.id == lease.task_id) & t.c.deadline.is_(None)
            await conn.execute(
                update(t).where(unset).values(deadline=self.dialect.now_plus(seconds))
            )
            deadline = (
                await conn.execute(select(t.c.deadline).where(t.c.id == lease.task_id))
            ).scalar_one()
            assert isinstance(deadline, datetime)
            return deadline

        return await self.run(body)

    async def cancel_requested(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        query = select(t.c.id).where(t.c.id.in_(list(ids)), t.c.cancel_requested.is_(True))

        async def body(conn: AsyncConnection) -> set[str]:
            return set((await conn.execute(query)).scalars())

        return await self.run(body)

    async def finish_cancelled(self, lease: Lease) -> datetime:
        """The running execution stopped after a cancel request: end it cancelled."""
        return await self._fenced_update(lease, "cancel", self._finish(CANCELLED))

    async def request_cancel(self, execution_id: str) -> str | None:
        """Cancel at once if not running; else flag it for its worker. Returns the status."""

        async def body(conn: AsyncConnection) -> str | None:
            where = t.c.id == execution_id
            status = (
                await conn.execute(select(t.c.status).where(where).with_for_update())
            ).scalar()
            if status is None or status in TERMINAL:
                return status
            if status == SCHEDULED:
                await conn.execute(update(t).where(where).values(self._finish(CANCELLED)))
                return CANCELLED
            await conn.execute(update(t).where(where).values(cancel_requested=True))
            return str(status)

        return await self.run(body)

    # -- events -----------------------------------------------------------------------------

    async def deliver_event(self, execution_id: str, name: str, data: Any) -> bool:
        """Store the event; False when one of that name was delivered already. Wakes the
        execution at once if it is suspended waiting for it."""
        encoded = payloads.encode(data, what=f"data of event {name!r}")

        async def body(conn: AsyncConnection) -> bool:
            row = {
                "execution_id": execution_id,
                "name": name,
                "data": encoded,
                "delivered_at": self.dialect.now(),
            }
            if not await self._insert_once(conn, events, row):
                return False
            waiting = (
                (t.c.id == execution_id) & (t.c.status == SCHEDULED) & (t.c.waiting_for == name)
            )
            woken = await conn.execute(
                update(t).where(waiting).values(run_at=self.dialect.now(), waiting_for=None)
            )
            if woken.rowcount:
                await self._notify(conn)
            return True

        return await self.run(body)

    async def get_event(self, execution_id: str, name: str) -> tuple[bool, Any]:
        query = select(events.c.data).where(
            events.c.execution_id == execution_id, events.c.name == name
        )

        async def body(conn: AsyncConnection) -> tuple[bool, Any]:
            row = (await conn.execute(query)).first()
            return (False, None) if row is None else (True, payloads.decode(row.data))

        return await self.run(body)

    # -- listing ----------------------------------------------------------------------------

    async def list_ids(self, status: str | None, limit: int) -> list[str]:
        query = select(t.c.id).order_by(t.c.created_at.desc(), t.c.id).limit(limit)
        if status is not None:
            query = query.where(t.c.status == status)

        async def body(conn: AsyncConnection) -> list[str]:
            return list((await conn.execute(query)).scalars())

        return await self.run(body)
