"""Deliberately broken backends: each breaks one clause of the contract.

The kit must catch every one of them (tests/test_mutants.py proves it); a kit that passes a
mutant tests nothing. Each is the reference backend with one method done the way real job
queues shipped it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from zart_ref.backend import ClaimedTask, Lease
from zart_ref.schema import COMPLETED, tasks
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


MUTANTS = {
    "NonAtomicClaim": "C1 atomic claim",
    "TokenlessComplete": "C2 fencing token",
}
__all__ = ["MUTANTS", "NonAtomicClaim", "TokenlessComplete"]
