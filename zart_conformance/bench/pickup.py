"""Pickup latency: from the moment a schedule call returns (committed) to handler start.

One idle worker; tasks are scheduled one at a time with random gaps, so each finds the
worker waiting. The handler stamps CLOCK_MONOTONIC, the clock the bench reads too. A
handler may start a hair before the schedule call has returned, so a sample can be a
little below zero: it is kept as measured.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from zart_ref import NewTask

from .db import BenchDB
from .procs import BenchError, processes, zart_worker
from .stamps import read_stamps
from .stats import latency_summary

WARM_UP = 1.0
Schedule = Callable[[str], Awaitable[None]]


async def sample(schedule: Schedule, stamps: Path, samples: int, gap: float) -> dict[str, Any]:
    """Schedule ``samples`` stamp tasks through ``schedule`` and summarize their pickup."""
    rng = random.Random(7)
    committed: dict[str, float] = {}
    await asyncio.sleep(WARM_UP)
    for i in range(samples):
        task_id = f"pickup{i:05d}"
        await schedule(task_id)
        committed[task_id] = time.monotonic()
        await asyncio.sleep(gap * (1 + rng.random()))
    deadline = time.monotonic() + 30
    while len(started := read_stamps(stamps)) < samples:
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(started)} of {samples} pickup tasks started")
        await asyncio.sleep(0.1)
    return latency_summary([started[task_id] - at for task_id, at in committed.items()])


async def pickup(db: BenchDB, samples: int, *, listen: bool, poll: float) -> dict[str, Any]:
    """A `zart worker` with LISTEN/NOTIFY (``listen``) or polling every ``poll`` seconds."""
    stamps = db.run_dir / f"stamps-{uuid.uuid4().hex[:8]}.txt"
    flags = ["--poll-interval", str(poll)] + ([] if listen else ["--no-listen"])
    async with db.fresh("pickup") as (target, backend):

        async def schedule(task_id: str) -> None:
            await backend.schedule([NewTask(id=task_id, name="stamp")])

        env = {"ZART_BENCH_STAMPS": str(stamps)}
        async with processes([zart_worker(target, *flags)], db.run_dir, env=env):
            gap = 0.02 if listen else poll
            result = await sample(schedule, stamps, samples, gap)
    how = "LISTEN/NOTIFY" if listen else "polling"
    return {**result, "wake_up": how, "poll_interval": poll}
