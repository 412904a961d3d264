"""One backend's server for the whole bench, and a fresh namespace for each measurement.

Timing that can be read from the database is read from it: a worker run lasts from the
first claim to the last completion, both stamped by the database clock, so neither process
start-up nor the bench's own polling is counted.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from zart_conformance.backends import Descriptor
from zart_conformance.provision import Server, Target, isolate
from zart_ref import NewTask, PoolConfig, SQLBackend
from zart_ref.schema import COMPLETED, tasks

from .cleanup import cleanup
from .procs import BenchError, check_alive

DRAIN_TIMEOUT = 600.0


@dataclass
class BenchDB:
    descriptor: Descriptor
    server: Server
    run_dir: Path

    @property
    def name(self) -> str:
        return self.descriptor.name

    @property
    def dialect(self) -> str:
        return self.descriptor.dialect

    @asynccontextmanager
    async def fresh(self, label: str) -> AsyncIterator[tuple[Target, SQLBackend]]:
        """An empty, migrated namespace (schema, database or file), dropped afterwards with
        its directory (a SQLite file and its -wal and -shm go with it). A drop that fails
        after the block failed (the server is gone) never hides the block's error."""
        run_id = f"bench-{label}-{self.name}-{uuid.uuid4().hex[:6]}"
        directory = self.run_dir / run_id
        directory.mkdir(parents=True, exist_ok=True)
        target = isolate(self.descriptor, self.server, run_id, directory)
        backend = SQLBackend(target.url, schema=target.schema, pool=PoolConfig(max_connections=4))
        async with cleanup(backend.close, target.drop, lambda: shutil.rmtree(directory)):
            await backend.migrate()
            yield target, backend


def noop_tasks(count: int, prefix: str = "t", name: str = "noop") -> list[NewTask]:
    return [NewTask(id=f"{prefix}{i:07d}", name=name) for i in range(count)]


async def wait_completed(
    backend: SQLBackend, count: int, procs: list[asyncio.subprocess.Process]
) -> None:
    """Until ``count`` tasks are completed (read every 0.1 s; the span comes from the rows)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while (await backend.count_by_status()).get(COMPLETED, 0) < count:
        check_alive(procs)
        if time.monotonic() > deadline:
            raise BenchError(f"{count} tasks were not completed within {DRAIN_TIMEOUT:g}s")
        await asyncio.sleep(0.1)


async def worked_span(backend: SQLBackend) -> tuple[float, dict[str, int]]:
    """Seconds from the first claim to the last completion, and completions per worker."""
    t = tasks
    span = select(func.min(t.c.claimed_at), func.max(t.c.finished_at))
    per_worker = select(t.c.locked_by, func.count()).group_by(t.c.locked_by)
    async with backend.engine.connect() as conn:
        first, last = (await conn.execute(span)).one()
        shares = {str(who): n for who, n in (await conn.execute(per_worker)).all()}
    return (last - first).total_seconds(), shares
