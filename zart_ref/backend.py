"""The one protocol every backend implements; the worker and the kit speak only this."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from .moments import check_delay, check_instant


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to schedule. ``id`` is the idempotency key; ``delay`` counts on the DB clock."""

    id: str
    name: str
    payload: Any = None
    delay: float = 0.0
    run_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task this worker holds until ``lease_expires_at`` (DB time) under ``token``."""

    id: str
    name: str
    payload: Any
    token: str
    attempt: int
    claimed_at: datetime
    lease_expires_at: datetime


@dataclass(frozen=True, slots=True)
class Lease:
    """What a write must present to be accepted: the task and the token of its claim."""

    task_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Pending:
    """What an idle worker's one cheap read found: due tasks, and leases that have expired."""

    due: bool
    expired: bool


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task's stored state, as ``status`` reports it."""

    id: str
    name: str
    status: str
    payload: Any
    attempts: int
    run_at: datetime
    result: Any = None
    error: str | None = None
    locked_by: str | None = None
    lease_expires_at: datetime | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    current_step: str | None = None
    steps_completed: int = 0
    waiting_for: str | None = None
    cancel_requested: bool = False
    deadline: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """Storage for tasks. Every write after a claim is fenced by the claim's token.

    Times passed back are the database's clock; the worker never compares them with its own.
    Writes that present a stale token change nothing and raise ``LeaseLost``.
    """

    async def migrate(self) -> None:
        """Create the schema if absent; safe to run again and concurrently."""

    async def now(self) -> datetime:
        """The database clock."""

    async def schedule(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Insert tasks; an existing id is left as it is. Returns created flags in order."""

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[ClaimedTask]:
        """Atomically take at most ``limit`` due tasks, minting a fresh token for this claim."""

    async def renew(self, leases: Sequence[Lease], lease_seconds: float) -> dict[str, datetime]:
        """Extend the leases still held; returns new expiries. Missing ids were lost."""

    async def complete(self, lease: Lease, result: Any) -> datetime:
        """Mark completed with ``result``; raises LeaseLost if the token is stale."""

    async def fail(self, lease: Lease, error: str, retry_in: float | None) -> datetime:
        """Record a failed attempt: reschedule after ``retry_in`` seconds or end failed."""

    async def release(self, lease: Lease) -> datetime:
        """Give the task back to scheduled at once, not counting this attempt."""

    async def recover_orphans(self) -> list[str]:
        """Return tasks whose lease expired (DB time) to scheduled; returns their ids."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """The stored state of one task."""

    async def count_by_status(self) -> dict[str, int]:
        """How many tasks are in each status."""

    async def close(self) -> None:
        """Release every connection."""


@runtime_checkable
class Notifier(Protocol):
    """Optional: a backend that can wake workers when work is scheduled or released."""

    async def listen(self, on_work: Callable[[], None], on_state: Callable[[str], None]) -> None:
        """Call ``on_work()`` on every notification until cancelled.

        Uses a connection of its own, outside the work pool, and subscribes again after it
        drops; ``on_state`` gets "listening" on each (re)subscription and "lost" on each drop.
        """


@runtime_checkable
class Prober(Protocol):
    """Optional: a backend that can say, in one read that locks nothing, whether there is work.

    An idle worker polls with ``pending()`` instead of a claim (on MySQL a locking claim is a
    transaction: two statements even when it finds nothing) and instead of its orphan sweep:
    one statement per poll interval, whatever the backend.
    """

    async def pending(self) -> Pending:
        """Whether a claim would find due tasks, and whether a sweep would find expired leases
        (both on the database clock)."""


def validate_new(tasks: Sequence[NewTask]) -> list[NewTask]:
    """Check ids, names and delays before any write; keep the first task of a repeated id."""
    from . import payload

    first: dict[str, NewTask] = {}
    names: set[str] = set()  # a bulk schedule repeats a few handler names many times
    for task in tasks:
        payload.check_name(task.id, what="task id")
        if not (type(task.name) is str and task.name in names):
            names.add(payload.check_name(task.name, what=f"handler name of task {task.id!r}"))
        check_delay(task.delay, what=f"delay of task {task.id!r}")
        if task.run_at is not None:
            check_instant(task.run_at, what=f"run_at of task {task.id!r}")
        if task.id in first:
            # Not stored (the first task of the id wins), but it must be storable all the same.
            payload.encode(task.payload, what=f"payload of task {task.id!r} (repeated)")
        else:
            first[task.id] = task
    return list(first.values())
