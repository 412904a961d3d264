"""Durable workflows: steps that run once, sleeps and waits that hold no worker slot.

Inside a handler, ``await step(name, fn, ...)`` returns the stored result of a step that
completed before (a replay after a crash or a suspension) and runs it otherwise. ``sleep`` and
``wait_for_event`` suspend the execution: the task goes back to scheduled until its wake time,
and the worker slot is freed. No context object is passed around: the running execution is
found through ``current_task()``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from .backend import Backend, Lease
from .context import current_task
from .errors import ConfigError, ZartError
from .moments import check_delay
from .retry import RetryPolicy


@runtime_checkable
class DurableBackend(Backend, Protocol):
    """A backend that can store steps and events and suspend or cancel executions."""

    async def get_step(self, execution_id: str, name: str) -> tuple[bool, Any]: ...
    async def save_step(self, lease: Lease, name: str, result: Any) -> None: ...
    async def start_step(self, lease: Lease, name: str) -> bool: ...
    async def suspend(
        self, lease: Lease, run_at: datetime | None, delay: float, waiting_for: str | None
    ) -> datetime: ...
    async def ensure_deadline(self, lease: Lease, seconds: float) -> datetime: ...
    async def cancel_requested(self, ids: list[str]) -> set[str]: ...
    async def finish_cancelled(self, lease: Lease) -> datetime: ...
    async def request_cancel(self, execution_id: str) -> str | None: ...
    async def deliver_event(self, execution_id: str, name: str, data: Any) -> bool: ...
    async def get_event(self, execution_id: str, name: str) -> tuple[bool, Any]: ...
    async def list_ids(self, status: str | None, limit: int) -> list[str]: ...


class Suspend(BaseException):
    """Raised by sleep/wait_for_event to end this run until ``run_at`` (or now + ``delay``).

    A BaseException so that ``except Exception`` in user code cannot swallow it.
    """

    def __init__(
        self, *, run_at: datetime | None = None, delay: float = 0.0, waiting_for: str | None = None
    ) -> None:
        super().__init__(f"suspended until {run_at or f'+{delay}s'}")
        self.run_at = run_at
        self.delay = delay
        self.waiting_for = waiting_for


class CancelRequested(BaseException):
    """The execution was cancelled: no new step may start."""


class EventTimeout(ZartError):
    """``wait_for_event`` reached its timeout without the event."""


class ExecutionTimeout(ZartError):
    """The workflow ran past its execution timeout."""


def _execution() -> tuple[DurableBackend, Lease]:
    running = current_task()
    backend = running.backend
    if not isinstance(backend, DurableBackend):
        raise ConfigError(f"{type(backend).__name__} cannot store steps; use SQLBackend")
    return backend, Lease(running.task.id, running.task.token)


async def step(
    name: str, fn: Callable[..., Any], *args: Any, retry: RetryPolicy | None = None
) -> Any:
    """Run ``fn(*args)`` once per execution and persist its result (JSON); replay it after.

    The step in flight at a crash runs again (at-least-once). ``retry`` retries failures of
    this step in place, with its backoff, before the step (and the run) fails.
    """
    backend, lease = _execution()
    found, result = await backend.get_step(lease.task_id, name)
    if found:
        return result
    if not await backend.start_step(lease, name):
        raise CancelRequested(f"execution {lease.task_id} was cancelled before step {name!r}")
    policy = retry or RetryPolicy(max_attempts=1)
    attempt = 0
    while True:
        attempt += 1
        try:
            value = fn(*args)
            result = await value if inspect.isawaitable(value) else value
            break
        except Exception:
            delay = policy.delay_for(attempt)
            if delay is None:
                raise
            await asyncio.sleep(delay)
    await backend.save_step(lease, name, result)
    return result


async def _marked_time(
    backend: DurableBackend, lease: Lease, key: str, seconds: float, *, what: str
) -> datetime:
    """The instant stored under step ``key``, set to DB now + ``seconds`` on the first run, so
    a replay keeps the sleep's wake time or the wait's deadline of the run that began it."""
    check_delay(seconds, what=what)
    found, marker = await backend.get_step(lease.task_id, key)
    if found:
        return datetime.fromisoformat(marker["at"])
    moment = await backend.now() + timedelta(seconds=seconds)
    await backend.save_step(lease, key, {"at": moment.isoformat()})
    return moment


async def sleep(name: str, seconds: float) -> None:
    """Sleep durably: the execution is rescheduled at the wake time (database clock) and
    holds no worker slot meanwhile; a restart during the sleep wakes on time."""
    backend, lease = _execution()
    wake = await _marked_time(
        backend, lease, f"{name}#sleep", seconds, what=f"seconds of sleep {name!r}"
    )
    if await backend.now() < wake:
        raise Suspend(run_at=wake)


async def wait_for_event(name: str, timeout: float) -> Any:  # noqa: ASYNC109 - the API's name
    """The data of event ``name`` of this execution, delivered before or during the wait.

    Suspends until the event arrives (delivery wakes the execution) or ``timeout`` seconds
    pass, then raises EventTimeout.
    """
    backend, lease = _execution()
    found, data = await backend.get_event(lease.task_id, name)
    if found:
        return data
    deadline = await _marked_time(
        backend, lease, f"{name}#wait", timeout, what=f"timeout of wait_for_event {name!r}"
    )
    if await backend.now() >= deadline:
        raise EventTimeout(f"no event {name!r} for execution {lease.task_id} within {timeout:g}s")
    raise Suspend(run_at=deadline, waiting_for=name)
