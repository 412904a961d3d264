"""The handlers the conformance workers run, and the listener that logs the worker's lifecycle.

Workers load this as ``--app zart_conformance.app:registry``. The run directory comes from
``ZART_EVENT_DIR``; durations in payloads are multiplied by ``ZART_TIME_SCALE``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from zart_ref import Registry, RetryPolicy, current_task, step, wait_for_event
from zart_ref import sleep as durable_sleep

from .eventlog import EventLog

registry = Registry()

# The payload each handler understands: name -> (type, what it means). The scenario loader
# checks workload params against it, so a typo fails at load instead of sleeping 0 ms.
PARAMS: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "sleep": {"ms": ((int, float), "milliseconds to wait")},
    "block": {"ms": ((int, float), "milliseconds to stall the event loop")},
    "flaky": {"fail_times": (int, "attempts that fail before one succeeds")},
    "dbwork": {
        "queries": (int, "database reads per task"),
        "ms": ((int, float), "milliseconds between reads"),
    },
    "steps": {
        "steps": (int, "number of steps"),
        "ms": ((int, float), "milliseconds per step"),
        "sleep_after": (int, "index of the step followed by a durable sleep"),
        "sleep_ms": ((int, float), "milliseconds of that sleep"),
        "wait_for": (str, "event name to wait for at the end"),
        "wait_s": ((int, float), "seconds the wait may take"),
    },
}
_SCALE = float(os.environ.get("ZART_TIME_SCALE", "1"))
_log: EventLog | None = None


def _events() -> EventLog | None:
    global _log
    directory = os.environ.get("ZART_EVENT_DIR")
    if _log is None and directory:
        name = os.environ.get("ZART_WORKER_NAME", f"worker-{os.getpid()}")
        _log = EventLog(Path(directory) / f"{name}.{os.getpid()}.jsonl", source=name)
    return _log


def _lifecycle(kind: str, data: dict[str, Any]) -> None:
    log = _events()
    if log is not None:
        log.write(kind, **data)


registry.add_listener(_lifecycle)


def _record(kind: str, **data: Any) -> None:
    running = current_task()
    task = running.task
    _lifecycle(
        kind,
        {
            "worker": running.worker_id,
            "task": task.id,
            "token": task.token,
            "attempt": task.attempt,
            **data,
        },
    )


async def _observed(payload: dict[str, Any], body: Any) -> Any:
    task = current_task().task
    _record(
        "handler_start",
        claimed_at=task.claimed_at.isoformat(),
        lease_expires_at=task.lease_expires_at.isoformat(),
    )
    try:
        result = await body
    except asyncio.CancelledError:
        _record("handler_cancelled")
        raise
    except Exception as exc:
        _record("handler_error", error=repr(exc))
        raise
    _record("handler_end")
    return {"task": task.id, "attempt": task.attempt, "result": result}


@registry.task("sleep", retry=RetryPolicy(max_attempts=1000, base_delay=0.1, max_delay=1.0))
async def sleep_task(payload: dict[str, Any]) -> Any:
    """Wait ``ms`` without blocking the worker: heartbeats and cancellation work meanwhile."""

    async def body() -> None:
        await asyncio.sleep(payload.get("ms", 0) / 1000 * _SCALE)

    return await _observed(payload, body())


@registry.task("block", retry=RetryPolicy(max_attempts=1000, base_delay=0.1, max_delay=1.0))
async def block(payload: dict[str, Any]) -> Any:
    """Stall the whole worker for ``ms`` (a CPU-bound handler or a GC pause): nothing else runs,
    so when it returns the worker writes with whatever token it held before the stall."""

    async def body() -> None:
        time.sleep(payload.get("ms", 0) / 1000 * _SCALE)  # noqa: ASYNC251 - the stall is the point

    return await _observed(payload, body())


# The retry policy the retry-backoff scenario checks against (delays scale with the run).
FLAKY_POLICY = RetryPolicy(
    max_attempts=4, backoff="exponential", base_delay=0.3 * _SCALE, max_delay=5.0, jitter=0.1
)


@registry.task("flaky", retry=FLAKY_POLICY)
async def flaky(payload: dict[str, Any]) -> Any:
    """Fail the first ``fail_times`` attempts, then succeed."""

    async def body() -> None:
        if current_task().task.attempt <= payload.get("fail_times", 0):
            raise RuntimeError(f"planned failure of attempt {current_task().task.attempt}")

    return await _observed(payload, body())


@registry.task("dbwork", retry=RetryPolicy(max_attempts=1000, base_delay=0.1, max_delay=1.0))
async def dbwork(payload: dict[str, Any]) -> Any:
    """Use the database from the handler (``queries`` reads of the clock), between short sleeps."""

    async def body() -> None:
        backend = current_task().backend
        for _ in range(payload.get("queries", 1)):
            await backend.now()
            await asyncio.sleep(payload.get("ms", 0) / 1000 * _SCALE)

    return await _observed(payload, body())


@registry.task("echo", retry=RetryPolicy(max_attempts=1))
async def echo(payload: Any) -> Any:
    """Return the payload unchanged: payload fidelity through the whole path."""

    async def body() -> Any:
        return payload

    return await _observed(payload, body())


@registry.workflow("steps", retry=RetryPolicy(max_attempts=1000, base_delay=0.1, max_delay=1.0))
async def steps(payload: dict[str, Any]) -> Any:
    """A durable workflow: ``steps`` steps of ``ms`` each, an optional durable ``sleep_ms``
    after step ``sleep_after``, and an optional wait for event ``wait_for`` (``wait_s``).

    Each step logs step_start/step_end, so the checker can see a completed step run again.
    """

    async def one(index: int) -> int:
        _record("step_start", step=index)
        await asyncio.sleep(payload.get("ms", 0) / 1000 * _SCALE)
        _record("step_end", step=index)
        return index

    async def body() -> Any:
        done = []
        for index in range(payload.get("steps", 1)):
            done.append(await step(f"step-{index}", one, index))
            _record("step_done", step=index)  # persisted (run now, or replayed from storage)
            if payload.get("sleep_after") == index:
                await durable_sleep(f"nap-{index}", payload.get("sleep_ms", 0) / 1000 * _SCALE)
        if "wait_for" in payload:
            _record("wait_begin", name=payload["wait_for"])
            done.append(
                await wait_for_event(payload["wait_for"], payload.get("wait_s", 30) * _SCALE)
            )
        return done

    return await _observed(payload, body())
