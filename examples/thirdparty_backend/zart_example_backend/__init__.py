"""An out-of-tree Zart backend: the public protocol, implemented by a package of its own.

``TimedBackend`` keeps every task in SQLite through the reference SQL backend and measures
how long each operation takes, the way an instrumentation layer for a production queue
would. It implements each method of ``zart_ref.Backend`` (and the durable-execution
methods) explicitly, so it shows the whole surface a backend author has to provide; the
conformance kit then proves it from the outside, in real worker processes.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from zart_ref import (
    ClaimedTask,
    DurableBackend,
    Lease,
    NewTask,
    Notifier,
    PoolConfig,
    SQLBackend,
    TaskRecord,
)

log = logging.getLogger("zart_example_backend")


def descriptor_path() -> Path:
    """The kit's descriptor of this backend (entry point ``zart_conformance.backends``)."""
    return Path(__file__).with_name("backend.toml")


class TimedBackend:
    """Zart's backend protocol over SQLite, with a count and total time per operation."""

    def __init__(self, url: str, *, pool: PoolConfig | None = None, schema: str | None = None):
        # The kit (and `zart worker --backend`) builds backends as factory(url, pool=, schema=).
        self._store = SQLBackend(url, pool=pool, schema=schema)
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    @asynccontextmanager
    async def _timed(self, operation: str) -> AsyncIterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.calls[operation] += 1
            self.seconds[operation] += time.perf_counter() - began

    # -- zart_ref.Backend -----------------------------------------------------------------

    async def migrate(self) -> None:
        async with self._timed("migrate"):
            await self._store.migrate()

    async def now(self) -> datetime:
        async with self._timed("now"):
            return await self._store.now()

    async def schedule(self, tasks: Sequence[NewTask]) -> list[bool]:
        async with self._timed("schedule"):
            return await self._store.schedule(tasks)

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        async with self._timed("claim"):
            return await self._store.claim(worker_id, limit, lease_seconds)

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> dict[str, datetime]:
        async with self._timed("renew"):
            return await self._store.renew(leases, lease_seconds)

    async def complete(self, lease: Lease, result: Any) -> datetime:
        async with self._timed("complete"):
            return await self._store.complete(lease, result)

    async def fail(self, lease: Lease, error: str, retry_in: float | None) -> datetime:
        async with self._timed("fail"):
            return await self._store.fail(lease, error, retry_in)

    async def release(self, lease: Lease) -> datetime:
        async with self._timed("release"):
            return await self._store.release(lease)

    async def recover_orphans(self) -> list[str]:
        async with self._timed("recover_orphans"):
            return await self._store.recover_orphans()

    async def get(self, task_id: str) -> TaskRecord | None:
        async with self._timed("get"):
            return await self._store.get(task_id)

    async def count_by_status(self) -> dict[str, int]:
        async with self._timed("count_by_status"):
            return await self._store.count_by_status()

    async def close(self) -> None:
        await self._store.close()
        for operation in sorted(self.calls):
            mean = self.seconds[operation] / self.calls[operation] * 1000
            log.info("%s: %d calls, %.2f ms mean", operation, self.calls[operation], mean)

    # -- zart_ref.backend.Notifier (optional; SQLite has none, so this returns at once) ---

    async def listen(self, on_work: Callable[[], None], on_state: Callable[[str], None]) -> None:
        await self._store.listen(on_work, on_state)

    # -- zart_ref.workflow.DurableBackend: steps, sleeps, events, cancellation ------------

    async def get_step(self, execution_id: str, name: str) -> tuple[bool, Any]:
        async with self._timed("get_step"):
            return await self._store.get_step(execution_id, name)

    async def save_step(self, lease: Lease, name: str, result: Any) -> None:
        async with self._timed("save_step"):
            await self._store.save_step(lease, name, result)

    async def start_step(self, lease: Lease, name: str) -> bool:
        async with self._timed("start_step"):
            return await self._store.start_step(lease, name)

    async def suspend(
        self, lease: Lease, run_at: datetime | None, delay: float, waiting_for: str | None
    ) -> datetime:
        async with self._timed("suspend"):
            return await self._store.suspend(lease, run_at, delay, waiting_for)

    async def ensure_deadline(self, lease: Lease, seconds: float) -> datetime:
        async with self._timed("ensure_deadline"):
            return await self._store.ensure_deadline(lease, seconds)

    async def cancel_requested(self, ids: list[str]) -> set[str]:
        async with self._timed("cancel_requested"):
            return await self._store.cancel_requested(ids)

    async def finish_cancelled(self, lease: Lease) -> datetime:
        async with self._timed("finish_cancelled"):
            return await self._store.finish_cancelled(lease)

    async def request_cancel(self, execution_id: str) -> str | None:
        async with self._timed("request_cancel"):
            return await self._store.request_cancel(execution_id)

    async def deliver_event(self, execution_id: str, name: str, data: Any) -> bool:
        async with self._timed("deliver_event"):
            return await self._store.deliver_event(execution_id, name, data)

    async def get_event(self, execution_id: str, name: str) -> tuple[bool, Any]:
        async with self._timed("get_event"):
            return await self._store.get_event(execution_id, name)

    async def list_ids(self, status: str | None, limit: int) -> list[str]:
        async with self._timed("list_ids"):
            return await self._store.list_ids(status, limit)


def _conforms(backend: TimedBackend) -> tuple[DurableBackend, Notifier]:
    """Never called: mypy checks here that TimedBackend has the whole protocol, signatures too."""
    return backend, backend
