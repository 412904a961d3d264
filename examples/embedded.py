"""Embedded mode: the worker runs as an asyncio task inside your application.

    DATABASE_URL=sqlite:///app.db python examples/embedded.py

The application schedules three tasks, the embedded worker runs them, and leaving the
``async with`` block stops the worker gracefully (running tasks finish or are released).
"""

from __future__ import annotations

import asyncio
import os
import uuid

from zart_ref import NewTask, Registry, SQLBackend, Worker, WorkerConfig

registry = Registry()


@registry.task()
async def greet(payload: dict[str, str]) -> str:
    return f"hello, {payload['name']}"


async def main() -> None:
    url = os.environ.get("DATABASE_URL", "sqlite:///zart-embedded.db")
    backend = SQLBackend(url, schema=os.environ.get("ZART_SCHEMA") or None)
    await backend.migrate()
    names = ["ada", "grace", "barbara"]
    run = uuid.uuid4().hex[:8]  # ids are idempotency keys: a second run needs its own
    await backend.schedule([NewTask(f"greet-{n}-{run}", "greet", {"name": n}) for n in names])

    # Lifecycle events tell the application when its tasks are done, without polling.
    completed: set[str] = set()
    all_done = asyncio.Event()

    def on_event(kind: str, data: dict[str, object]) -> None:
        if kind == "completed":
            completed.add(str(data["task"]))
            if len(completed) == len(names):
                all_done.set()

    config = WorkerConfig(poll_interval=0.2, shutdown_timeout=5)
    worker = Worker(backend, registry, config)
    worker.add_listener(on_event)
    async with worker:
        # The application's own work goes here; this example just waits for its tasks.
        await all_done.wait()
    for name in names:
        record = await backend.get(f"greet-{name}-{run}")
        print(record.result if record else f"greet-{name}-{run} missing")
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
