"""No-op task throughput: real `zart worker` processes, or the raw-SQL ceiling's processes.

Both drain the same table: ``count`` tasks scheduled once every process is polling (every
0.05 s, so that none starts late; while claims come back full the interval plays no part).
The run lasts from the first claim to the last completion, both read from the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zart_conformance.provision import Target
from zart_ref import SQLBackend

from .db import BenchDB, noop_tasks, wait_completed, worked_span
from .procs import processes, zart_worker

POLL = 0.05
Command = Callable[[Target, SQLBackend], list[str]]


def worker_command(target: Target, backend: SQLBackend) -> list[str]:
    return zart_worker(target, "--poll-interval", str(POLL))


async def drain_rate(db: BenchDB, count: int, workers: int, command: Command) -> dict[str, Any]:
    """Tasks per second ``workers`` processes of ``command`` complete, from the rows."""
    async with db.fresh(f"p{workers}") as (target, backend):
        commands = [command(target, backend) for _ in range(workers)]
        async with processes(commands, db.run_dir) as procs:
            await backend.schedule(noop_tasks(count))
            await wait_completed(backend, count, procs)
        seconds, shares = await worked_span(backend)
    return {
        "tasks": count,
        "processes": workers,
        "seconds": round(seconds, 4),
        "per_second": round(count / seconds, 1),
        "completed_by_process": sorted(shares.values(), reverse=True),
    }


async def worker_throughput(db: BenchDB, count: int, workers: int) -> dict[str, Any]:
    return await drain_rate(db, count, workers, worker_command)
