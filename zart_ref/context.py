"""The task being run, reachable from handler code without threading a context object."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from .backend import Backend, ClaimedTask

_current: ContextVar[RunningTask] = ContextVar("zart_current_task")


@dataclass(frozen=True, slots=True)
class RunningTask:
    """The claimed task, the worker running it, and the backend (to schedule follow-ups)."""

    task: ClaimedTask
    worker_id: str
    backend: Backend


def current_task() -> RunningTask:
    """The task whose handler is running in this asyncio task; LookupError outside one."""
    try:
        return _current.get()
    except LookupError:
        raise LookupError("current_task() called outside a zart handler") from None


def set_current(running: RunningTask) -> None:
    _current.set(running)
