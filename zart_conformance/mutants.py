"""Deliberately broken backends: each breaks one clause of the contract.

The kit must catch every one of them (tests/test_mutants.py proves it); a kit that passes a
mutant tests nothing. Each is the reference backend with one method done the way real job
queues shipped it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from zart_ref.backend import ClaimedTask, Lease, Pending
from zart_ref.config import PoolConfig
from zart_ref.errors import DatabaseUnavailable
from zart_ref.schema import COMPLETED, RUNNING, tasks
from zart_ref.sql import SQLBackend

t = tasks


class NonAtomicClaim(SQLBackend):
    """Breaks C1: reads due rows, then marks them running in a second statement, unlocked.

    Two workers that read at the same time both take the same tasks.
    """

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        token = self.new_token()

        async def body(conn: AsyncConnection) -> list[Row[Any]]:
            ids = list((await conn.execute(self._due(limit))).scalars())
            await asyncio.sleep(0.01)  # the window every check-then-act race has
            if not ids:
                return []
            stmt = update(t).where(t.c.id.in_(ids))
            stmt = stmt.values(self._claim_values(worker_id, token, lease_seconds))
            return await self._update_returning(conn, stmt, self._CLAIMED, t.c.lock_token == token)

        return [self._claimed(row, token) for row in await self.run(body)]


class TokenlessComplete(SQLBackend):
    """Breaks C2: completion trusts the caller and ignores the lock token.

    A worker that lost its lease (paused, partitioned) completes a task another worker now owns.
    """

    async def complete(self, lease: Lease, result: Any) -> Any:
        values = {**self._finish(COMPLETED), "result": self.encode_result(lease, result)}
        stmt = update(t).where(t.c.id == lease.task_id).values(values)

        async def body(conn: AsyncConnection) -> Any:
            await conn.execute(stmt)
            return (await conn.execute(select(self.dialect.now()))).scalar_one()

        return await self.run(body)


class OverClaim(SQLBackend):
    """Breaks C1.3: a claim returns one row more than asked.

    Stands for `UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`, whose
    subselect a planner may run again under contention, taking more than n rows.
    """

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        return await super().claim(worker_id, limit + 1, lease_seconds)


class AppClockLeases(SQLBackend):
    """Breaks C3: leases are computed with the worker's clock instead of the database's."""

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        claimed = await super().claim(worker_id, limit, lease_seconds)
        expiry = datetime.now(UTC) + timedelta(seconds=lease_seconds)
        ids = [task.id for task in claimed]

        async def body(conn: AsyncConnection) -> None:
            if ids:
                await conn.execute(update(t).where(t.c.id.in_(ids)).values(lease_expires_at=expiry))

        await self.run(body)
        return [replace(task, lease_expires_at=expiry) for task in claimed]

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> dict[str, datetime]:
        renewed = await super().renew(leases, lease_seconds)
        expiry = datetime.now(UTC) + timedelta(seconds=lease_seconds)

        async def body(conn: AsyncConnection) -> None:
            if renewed:
                stmt = update(t).where(t.c.id.in_(list(renewed))).values(lease_expires_at=expiry)
                await conn.execute(stmt)

        await self.run(body)
        return dict.fromkeys(renewed, expiry)


class SlowHeartbeat(SQLBackend):
    """Breaks C4.1: only every fourth heartbeat extends the lease, as if heartbeats ran at 4/3
    of the lease instead of a third of it. The worker believes every renewal succeeded."""

    calls = 0

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> dict[str, datetime]:
        self.calls += 1
        if self.calls % 4 == 0:
            return await super().renew(leases, lease_seconds)

        async def body(conn: AsyncConnection) -> dict[str, datetime]:
            held = select(t.c.id, t.c.lease_expires_at).where(
                t.c.status == RUNNING, t.c.lock_token.in_([x.token for x in leases])
            )
            return {row.id: row.lease_expires_at for row in await conn.execute(held)}

        return await self.run(body)


class NoRequeue(SQLBackend):
    """Breaks C7.1: release reports success but writes nothing, so a task given back on
    shutdown waits for its lease to expire and orphan recovery instead of running at once."""

    async def release(self, lease: Lease) -> datetime:
        return await self.now()


class NoStatementTimeouts(SQLBackend):
    """Breaks C8.3: database calls have no bound of their own (an hour), so a black-holed
    socket hangs the worker until the network comes back instead of failing fast."""

    def __init__(self, url: Any, *, pool: PoolConfig | None = None, **options: Any) -> None:
        unbounded = replace(pool or PoolConfig(), statement_timeout=3600.0, acquire_timeout=3600.0)
        super().__init__(url, pool=unbounded, **options)


class ForgetfulSteps(SQLBackend):
    """Breaks C6.1: completed steps are stored but never found, so a replay runs them again."""

    async def get_step(self, execution_id: str, name: str) -> tuple[bool, Any]:
        return False, None


class NoOrphanRecovery(SQLBackend):
    """Breaks C4.2: the orphan sweep finds nothing, so a task whose worker died stays
    ``running`` under an expired lease forever (a queue that trusts a worker registry)."""

    async def recover_orphans(self) -> list[str]:
        return []


class ImmediateRetry(SQLBackend):
    """Breaks C6.2: a failed attempt is rescheduled at once, whatever backoff was asked for."""

    async def fail(self, lease: Lease, error: str, retry_in: float | None) -> datetime:
        return await super().fail(lease, error, None if retry_in is None else 0.0)


class UnbufferedEvents(SQLBackend):
    """Breaks C10.1: an event is kept only when the execution is already waiting for it; one
    delivered earlier is acknowledged and dropped, so the wait later never sees it."""

    async def deliver_event(self, execution_id: str, name: str, data: Any) -> bool:
        record = await self.get(execution_id)
        if record is None or record.waiting_for != name:
            return True
        return await super().deliver_event(execution_id, name, data)


class EarlyWake(SQLBackend):
    """Breaks C3.1: a durable sleep is stored as due now, so the execution wakes at once
    instead of at the database time the sleep asked for."""

    async def suspend(
        self, lease: Lease, run_at: datetime | None, delay: float, waiting_for: str | None
    ) -> datetime:
        if waiting_for is None:
            run_at, delay = None, 0.0
        return await super().suspend(lease, run_at, delay, waiting_for)


class NoResubscribe(SQLBackend):
    """Breaks C8: LISTEN gives up after its connection drops, without telling the worker,
    so pickup falls back to polling until the process restarts."""

    async def listen(self, on_work: Callable[[], None], on_state: Callable[[str], None]) -> None:
        lost = asyncio.Event()

        def state(text: str) -> None:
            if lost.is_set():
                return
            if text.startswith("lost"):
                lost.set()
            on_state(text)

        listener = asyncio.create_task(super().listen(on_work, state))
        await lost.wait()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await asyncio.Event().wait()  # silent from here on: the worker believes it listens


class ErrorsAsNoWork(SQLBackend):
    """Breaks C8.2: a claim, idle poll or sweep that cannot reach the database answers "nothing to do",
    so the worker looks healthy through an outage and no backoff or alarm ever starts."""

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        try:
            return await super().claim(worker_id, limit, lease_seconds)
        except DatabaseUnavailable:
            return []

    async def recover_orphans(self) -> list[str]:
        try:
            return await super().recover_orphans()
        except DatabaseUnavailable:
            return []

    async def pending(self) -> Pending:
        try:
            return await super().pending()
        except DatabaseUnavailable:
            return Pending(due=False, expired=False)


class LostCancel(SQLBackend):
    """Breaks C5.2 for cancellation: a cancel request is acknowledged with the current status
    but never stored, so the execution runs on to completion."""

    async def request_cancel(self, execution_id: str) -> str | None:
        record = await self.get(execution_id)
        return record.status if record else None


# Each mutant and the clause it breaks; tests/test_conformance.py names the scenario that
# must catch it.
MUTANTS = {
    "NonAtomicClaim": "C1 atomic claim",
    "OverClaim": "C1.3 claim size",
    "TokenlessComplete": "C2 fencing token",
    "AppClockLeases": "C3 database clock",
    "SlowHeartbeat": "C4.1 heartbeat at lease/3",
    "NoRequeue": "C7 graceful shutdown requeue",
    "NoStatementTimeouts": "C8.3 bounded database calls",
    "ForgetfulSteps": "C6.1 step memoization",
    "NoOrphanRecovery": "C4.2 expired leases reclaimable",
    "ImmediateRetry": "C6.2 retry backoff",
    "UnbufferedEvents": "C10.1 events before the wait kept",
    "EarlyWake": "C3.1 durable sleep on the database clock",
    "NoResubscribe": "C8 LISTEN re-subscribes after a drop",
    "ErrorsAsNoWork": "C8.2 database errors are not 'no work'",
    "LostCancel": "C5.2 a cancelled execution ends cancelled",
}
__all__ = [
    "MUTANTS",
    "AppClockLeases",
    "EarlyWake",
    "ErrorsAsNoWork",
    "ForgetfulSteps",
    "ImmediateRetry",
    "LostCancel",
    "NoOrphanRecovery",
    "NoRequeue",
    "NoResubscribe",
    "NoStatementTimeouts",
    "NonAtomicClaim",
    "OverClaim",
    "SlowHeartbeat",
    "TokenlessComplete",
    "UnbufferedEvents",
]
