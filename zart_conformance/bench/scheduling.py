"""Scheduling: many tasks in one call, and the latency of scheduling one task at a time."""

from __future__ import annotations

import time
from typing import Any

from zart_ref import NewTask

from .db import BenchDB, noop_tasks
from .stats import latency_summary


async def scheduling(db: BenchDB, count: int, singles: int) -> dict[str, Any]:
    async with db.fresh("sched") as (_, backend):
        began = time.perf_counter()
        await backend.schedule(noop_tasks(count))
        bulk = time.perf_counter() - began
        latencies = []
        for i in range(singles):
            began = time.perf_counter()
            await backend.schedule([NewTask(id=f"single{i:06d}", name="noop")])
            latencies.append(time.perf_counter() - began)
    return {
        "bulk": {"tasks": count, "seconds": round(bulk, 4), "per_second": round(count / bulk, 1)},
        "single": latency_summary(latencies),
    }
