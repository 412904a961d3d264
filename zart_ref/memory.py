"""An in-memory backend for logic tests and examples: the contract without a database.

Its clock is injectable, so tests can move time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from . import payload as payloads
from .backend import ClaimedTask, Lease, NewTask, Pending, TaskRecord, validate_new
from .errors import LeaseLost
from .schema import COMPLETED, FAILED, RUNNING, SCHEDULED


@dataclass
class _Row:
    record: TaskRecord
    token: str | None = None
    claimed_at: datetime | None = None


class InMemoryBackend:
    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rows: dict[str, _Row] = {}
        self._lock = asyncio.Lock()

    async def migrate(self) -> None:
        return None

    async def now(self) -> datetime:
        return self.clock()

    async def close(self) -> None:
        return None

    async def schedule(self, tasks: Sequence[NewTask]) -> list[bool]:
        validate_new(tasks)
        # Every payload checked before the first insert: a bad one writes nothing.
        encoded = [payloads.encode(t.payload, what=f"payload of task {t.id!r}") for t in tasks]
        created = []
        now = self.clock()
        for task, text in zip(tasks, encoded, strict=True):
            if task.id in self.rows:
                created.append(False)
                continue
            self.rows[task.id] = _Row(
                TaskRecord(
                    id=task.id,
                    name=task.name,
                    status=SCHEDULED,
                    payload=payloads.decode(text),
                    attempts=0,
                    run_at=task.run_at or now + timedelta(seconds=task.delay),
                    created_at=now,
                )
            )
            created.append(True)
        return created

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        async with self._lock:
            now = self.clock()
            due = sorted(self._due(now), key=lambda r: (r.record.run_at, r.record.id))[:limit]
            token = uuid.uuid4().hex
            expiry = now + timedelta(seconds=lease_seconds)
            claimed = []
            for row in due:
                row.token, row.claimed_at = token, now
                row.record = replace(
                    row.record,
                    status=RUNNING,
                    attempts=row.record.attempts + 1,
                    locked_by=worker_id,
                    lease_expires_at=expiry,
                )
                claimed.append(
                    ClaimedTask(
                        row.record.id,
                        row.record.name,
                        row.record.payload,
                        token,
                        row.record.attempts,
                        now,
                        expiry,
                    )
                )
            return claimed

    def _held(self, lease: Lease, operation: str) -> _Row:
        row = self.rows.get(lease.task_id)
        if row is None or row.token != lease.token or row.record.status != RUNNING:
            raise LeaseLost(lease.task_id, lease.token, operation)
        return row

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> dict[str, datetime]:
        renewed = {}
        expiry = self.clock() + timedelta(seconds=lease_seconds)
        for lease in leases:
            try:
                row = self._held(lease, "renew")
            except LeaseLost:
                continue
            row.record = replace(row.record, lease_expires_at=expiry)
            renewed[lease.task_id] = expiry
        return renewed

    def _set(self, row: _Row, **changes: Any) -> datetime:
        now = self.clock()
        row.record = replace(row.record, lease_expires_at=None, **changes)
        row.token = None
        return now

    async def complete(self, lease: Lease, result: Any) -> datetime:
        row = self._held(lease, "complete")
        encoded = payloads.encode(result, what=f"result of task {lease.task_id!r}")
        return self._set(
            row, status=COMPLETED, result=payloads.decode(encoded), finished_at=self.clock()
        )

    async def fail(self, lease: Lease, error: str, retry_in: float | None) -> datetime:
        row = self._held(lease, "fail")
        if retry_in is None:
            return self._set(row, status=FAILED, error=error, finished_at=self.clock())
        run_at = self.clock() + timedelta(seconds=retry_in)
        return self._set(row, status=SCHEDULED, error=error, run_at=run_at)

    async def release(self, lease: Lease) -> datetime:
        row = self._held(lease, "release")
        return self._set(row, status=SCHEDULED, attempts=row.record.attempts - 1)

    def _expired(self) -> list[_Row]:
        now = self.clock()
        return [
            r
            for r in self.rows.values()
            if r.record.status == RUNNING
            and r.record.lease_expires_at
            and r.record.lease_expires_at < now
        ]

    def _due(self, now: datetime) -> list[_Row]:
        return [
            r for r in self.rows.values() if r.record.status == SCHEDULED and r.record.run_at <= now
        ]

    async def pending(self) -> Pending:
        return Pending(due=bool(self._due(self.clock())), expired=bool(self._expired()))

    async def recover_orphans(self) -> list[str]:
        expired = self._expired()
        for row in expired:
            self._set(row, status=SCHEDULED)
        return [r.record.id for r in expired]

    async def get(self, task_id: str) -> TaskRecord | None:
        row = self.rows.get(task_id)
        return row.record if row else None

    async def count_by_status(self) -> dict[str, int]:
        return dict(Counter(r.record.status for r in self.rows.values()))
