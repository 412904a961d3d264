"""The worker: claim due tasks, run handlers, keep leases, give back what it cannot finish.

Three loops share one set of running tasks: polling claims work, heartbeats renew leases
(every lease/3) and the sweep returns expired leases to scheduled. An idle worker polls with
one read that stands in for both claim and sweep, where the backend can (``Prober``). A task's lease is watched
with the local monotonic clock too, so a worker cut off from its database stops the handler
once the lease must have lapsed, even when no heartbeat could tell it so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError

from . import payload as payloads
from .backend import Backend, ClaimedTask, Lease, Notifier, Prober
from .config import WorkerConfig
from .context import RunningTask, set_current
from .errors import DatabaseUnavailable, LeaseLost, PayloadError, UnknownHandler, ZartError
from .registry import Handler, Listener, Registry
from .workflow import (
    CancelRequested,
    DurableBackend,
    EventTimeout,
    ExecutionTimeout,
    Suspend,
)

log = logging.getLogger("zart.worker")
T = TypeVar("T")

# Errors that mean "try again later", never "no work" and never "task failed".
TRANSIENT: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    DBAPIError,
    OSError,
    TimeoutError,
)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class GaveUp(ZartError):
    """A task was claimed more often than its retry policy allows."""


@dataclass
class _Running:
    task: ClaimedTask
    runner: asyncio.Task[None]
    # Monotonic time at which the last successful claim/renew was *sent*: the lease is
    # surely valid until this plus the lease duration, whatever the clocks say.
    renewed_sent: float
    finishing: bool = False
    cancel_reason: str | None = None


class Worker:
    """Runs handlers from ``registry`` for tasks stored in ``backend``.

    Use ``await worker.run()`` (stops on ``stop()``), or ``async with worker:`` to run it as a
    background task of an application.
    """

    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        config: WorkerConfig | None = None,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.config = config or WorkerConfig()
        self.worker_id = worker_id or default_worker_id()
        self._running: dict[str, _Running] = {}
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._last_db_ok: float | None = None
        self._main: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = list(registry.listeners)
        self._prober = backend if isinstance(backend, Prober) else None
        self._probed_at: float | None = None

    # -- public ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Begin a graceful shutdown: stop claiming, let running tasks finish, release the rest."""
        if not self._stopping.is_set():
            self.emit("worker_stopping", inflight=sorted(self._running))
        self._stopping.set()
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(kind, data)`` on this worker's lifecycle events (metrics, logs)."""
        self._listeners.append(listener)

    def is_healthy(self) -> bool:
        """True when the database answered within the last lease duration."""
        if self._last_db_ok is None:
            return False
        return time.monotonic() - self._last_db_ok < self.config.lease_duration

    async def __aenter__(self) -> Worker:
        self._main = asyncio.create_task(self.run(), name=f"zart-worker-{self.worker_id}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        if self._main is not None:
            await self._main

    async def run(self) -> None:
        """Work until ``stop()``; then drain within ``shutdown_timeout`` and return."""
        self.emit("worker_started", pid=os.getpid(), config=self.config.__dict__)
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="zart-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="zart-sweep"),
        ]
        if self.config.listen and isinstance(self.backend, Notifier):
            listener = self.backend.listen(self._wake.set, self._listener_state)
            background.append(asyncio.create_task(listener, name="zart-listener"))
        try:
            await self._poll_loop()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            # Bounded: a loop that ignored its cancellation must not keep the process alive.
            await asyncio.wait(background, timeout=self.config.shutdown_timeout)
            # Only reached with tasks left if run() itself was cancelled: release them.
            await self._cancel_all("shutdown")
            self.emit("worker_stopped")

    def observed(self, kind: str) -> bool:
        """Whether an event of ``kind`` has a listener or a log line: the per-task events
        (claimed, writing, completed) are only built when it does."""
        return bool(self._listeners) or (kind in _LOGGED and log.isEnabledFor(_LOGGED[kind]))

    def emit(self, kind: str, **data: Any) -> None:
        data["worker"] = self.worker_id
        if kind in _LOGGED:
            log.log(_LOGGED[kind], "zart: %s %s", kind, data)
        for listener in self._listeners:
            try:
                listener(kind, data)
            except Exception:
                log.exception("zart listener failed on %s", kind)

    # -- loops ----------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        cfg = self.config
        failures = 0
        # Whether work may be waiting (start-up, a wake-up, a full claim, a freed slot): then
        # claim at once. After a quiet poll interval, probe first where the backend can.
        busy = True
        while not self._stopping.is_set():
            free = self._free_slots()
            if free <= 0:
                self._slot_freed.clear()
                await self._wait_for(self._slot_freed, None)
                busy = True
                continue
            limit = min(free, cfg.max_tasks_per_poll)
            sent = time.monotonic()
            # Cleared before the claim, never after: a wake-up (NOTIFY, released work) that
            # arrives while this claim is in flight must trigger another claim, not be lost.
            self._wake.clear()
            operation = "claim" if busy or self._prober is None else "pending"
            try:
                if operation == "pending" and not await self._work_pending():
                    busy = await self._wait_for(self._wake, cfg.poll_interval)
                    continue
                operation = "claim"
                claimed = await self.backend.claim(self.worker_id, limit, cfg.lease_duration)
            except TRANSIENT as exc:
                failures += 1
                self._db_error(operation, exc, sent)
                busy = await self._wait_for(self._wake, _backoff(failures, cfg.poll_interval))
                continue
            failures = 0
            self._db_ok()
            if claimed and self.observed("claimed"):
                self.emit(
                    "claimed",
                    limit=limit,
                    lease=cfg.lease_duration,
                    tasks=[_describe(task) for task in claimed],
                )
            if self._stopping.is_set():
                # stop() arrived while the claim was in flight: hand these straight back.
                await asyncio.gather(*(self._give_back(task) for task in claimed))
                break
            for task in claimed:
                self._start(task, sent)
            if len(claimed) == limit:
                # Let the handlers just started take their first step: those that return at
                # once free their slots, and the next claim is a full batch, not the rest.
                await asyncio.sleep(0)
                busy = True
            else:
                busy = await self._wait_for(self._wake, cfg.poll_interval)

    async def _work_pending(self) -> bool:
        """An idle poll: one read that locks nothing says whether to claim, and stands in for
        the orphan sweep (so an idle worker sends one statement per poll interval)."""
        assert self._prober is not None
        pending = await self._prober.pending()
        self._db_ok()
        self._probed_at = time.monotonic()
        if pending.expired:
            await self._recover_orphans()
        return pending.due or pending.expired

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.heartbeat_every)
            self._expire_local_leases()
            held = {tid: r.task.token for tid, r in self._running.items()}
            if not held:
                continue
            sent = time.monotonic()
            leases = [Lease(tid, token) for tid, token in held.items()]
            try:
                renewed = await self.backend.renew(leases, cfg.lease_duration)
            except TRANSIENT as exc:
                self._db_error("renew", exc, sent)
                continue
            self._db_ok()
            self.emit("renewed", leases={tid: _iso(at) for tid, at in renewed.items()})
            for tid, token in held.items():
                running = self._running.get(tid)
                if running is None or running.task.token != token:
                    continue
                if tid in renewed:
                    running.renewed_sent = sent
                else:
                    self._lease_lost(running, "renew")
            await self._apply_cancellations(list(renewed))

    async def _apply_cancellations(self, ids: list[str]) -> None:
        """Stop the handlers of executions whose cancellation was requested meanwhile."""
        if not ids or not isinstance(self.backend, DurableBackend):
            return
        began = time.monotonic()
        try:
            requested = await self.backend.cancel_requested(ids)
        except TRANSIENT as exc:
            self._db_error("cancel_requested", exc, began)
            return
        for tid in requested:
            running = self._running.get(tid)
            if running is not None and not running.finishing and not running.runner.done():
                running.cancel_reason = "cancelled"
                running.runner.cancel()
                self.emit("cancelling", task=tid, token=running.task.token)

    def _listener_state(self, state: str) -> None:
        if state == "listening":
            self.emit("listening")
        else:
            self.emit("listen_lost", error=state)

    async def _sweep_loop(self) -> None:
        every = self.config.sweep_every
        while True:
            await asyncio.sleep(every)
            if self._probed_at is not None and time.monotonic() - self._probed_at < every:
                continue  # an idle poll looked for expired leases meanwhile
            await self._recover_orphans()

    async def _recover_orphans(self) -> None:
        began = time.monotonic()
        try:
            recovered = await self.backend.recover_orphans()
        except TRANSIENT as exc:
            self._db_error("recover_orphans", exc, began)
            return
        self._db_ok()
        if recovered:
            self.emit("orphans_recovered", tasks=sorted(recovered))
            self._wake.set()

    async def _drain(self) -> None:
        runners = [r.runner for r in self._running.values()]
        if runners:
            await asyncio.wait(runners, timeout=self.config.shutdown_timeout)
        await self._cancel_all("shutdown")

    async def _cancel_all(self, reason: str) -> None:
        """Cancel every running handler and wait until its code has stopped and been released."""
        runners = []
        for running in list(self._running.values()):
            if not running.runner.done():
                running.cancel_reason = running.cancel_reason or reason
                running.runner.cancel()
                runners.append(running.runner)
        if runners:
            await asyncio.gather(*runners, return_exceptions=True)

    # -- one task -------------------------------------------------------------------------

    def _start(self, task: ClaimedTask, sent: float) -> None:
        if task.id in self._running:
            # A backend handed us a task we already run: never run it twice here.
            self.emit("duplicate_claim", task=task.id, token=task.token)
            return
        runner = asyncio.create_task(self._execute(task), name=f"zart-task-{task.id}")
        self._running[task.id] = _Running(task, runner, sent)

    async def _execute(self, task: ClaimedTask) -> None:
        lease = Lease(task.id, task.token)
        running = self._running[task.id]
        set_current(RunningTask(task, self.worker_id, self.backend))
        try:
            ending = await self._outcome(task, running, lease)
            if ending is not None:
                operation, write, extra = ending
                running.finishing = True
                self._slot_freed.set()  # the handler is done: the next claim overlaps the write
                await self._final_write(running, operation, write, **extra)
        finally:
            self._running.pop(task.id, None)
            self._slot_freed.set()

    async def _outcome(self, task: ClaimedTask, running: _Running, lease: Lease) -> _Ending | None:
        """Run the handler and choose the one write that ends this run (None: write nothing)."""
        backend: Any = self.backend
        try:
            handler = self.registry.get(task.name)
            if task.attempt > handler.retry.max_attempts:
                # Crashes and lost leases count too: a task that kills its workers stops here.
                raise GaveUp(
                    f"task {task.id} gave up after {task.attempt - 1} attempts "
                    f"(max_attempts {handler.retry.max_attempts})"
                )
            result = await self._call(handler, task, lease)
            payloads.encode(result, what=f"result of task {task.id!r}")
        except asyncio.CancelledError:
            if running.cancel_reason == "shutdown":
                return "release", lambda: backend.release(lease), {}
            if running.cancel_reason == "cancelled":
                return "cancel", lambda: backend.finish_cancelled(lease), {}
            if running.cancel_reason is None:
                raise  # cancelled from outside the worker; propagate.
            return None  # lease lost: nothing of ours may be written any more
        except Suspend as pause:
            run_at, delay, waiting = pause.run_at, pause.delay, pause.waiting_for
            return (
                "suspend",
                lambda: backend.suspend(lease, run_at, delay, waiting),
                {"waiting_for": waiting, "until": run_at.isoformat() if run_at else None},
            )
        except CancelRequested:
            return "cancel", lambda: backend.finish_cancelled(lease), {}
        except LeaseLost:
            return None  # a step write was fenced: another worker owns the execution now
        except (UnknownHandler, EventTimeout, ExecutionTimeout, GaveUp, PayloadError) as exc:
            error = str(exc)
            return "fail", lambda: backend.fail(lease, error, None), {"retry_in": None}
        except Exception as exc:
            error = "".join(traceback.format_exception_only(exc)).strip()
            retry_in = handler.retry.delay_for(task.attempt)
            log.warning(
                "zart: task %s (%s) attempt %d failed; %s",
                task.id,
                task.name,
                task.attempt,
                f"retry in {retry_in:.1f}s" if retry_in is not None else "no retries left",
                exc_info=exc,
            )
            return "fail", lambda: backend.fail(lease, error, retry_in), {"retry_in": retry_in}
        return "complete", lambda: backend.complete(lease, result), {}

    async def _call(self, handler: Handler, task: ClaimedTask, lease: Lease) -> Any:
        """The handler, bounded by its execution timeout when it has one."""
        if handler.timeout is None:
            return await handler.fn(task.payload)
        deadline = await self.backend.ensure_deadline(lease, handler.timeout)  # type: ignore[attr-defined]
        remaining = (deadline - task.claimed_at).total_seconds()
        if remaining <= 0:
            raise ExecutionTimeout(f"execution {task.id} passed its {handler.timeout:g}s timeout")
        bound = asyncio.timeout(remaining)
        try:
            async with bound:
                return await handler.fn(task.payload)
        except TimeoutError:
            if bound.expired():
                raise ExecutionTimeout(
                    f"execution {task.id} passed its {handler.timeout:g}s timeout"
                ) from None
            raise

    async def _final_write(
        self,
        running: _Running,
        operation: str,
        write: Callable[[], Awaitable[datetime]],
        **extra: Any,
    ) -> None:
        """Perform a fenced write, retrying transient errors while our lease may still hold."""
        task = running.task
        failures = 0
        # Logged before the write: if this process dies now, the checker knows the write may
        # have landed, and does not judge the next owner by a lease that may have ended.
        if self.observed("writing"):
            self.emit("writing", task=task.id, token=task.token, operation=operation)
        while True:
            began = time.monotonic()
            try:
                at = await write()
            except LeaseLost:
                self.emit("lease_lost", task=task.id, token=task.token, operation=operation)
                return
            except TRANSIENT as exc:
                failures += 1
                self._db_error(operation, exc, began)
                if self._lease_surely_expired(running):
                    # Given up locally: the write was never answered, not fenced by the DB.
                    self.emit(
                        "lease_lost",
                        task=task.id,
                        token=task.token,
                        operation=operation,
                        reason="local_expiry",
                    )
                    return
                await asyncio.sleep(_backoff(failures, self.config.heartbeat_every))
                continue
            except Exception as exc:
                # Not transient, not ours to fix: leave the task to lease expiry, never hang.
                log.exception("zart %s of task %s failed", operation, task.id)
                self.emit("write_error", task=task.id, operation=operation, error=repr(exc)[:500])
                return
            self._db_ok()
            kind = _DONE[operation]
            if self.observed(kind):
                self.emit(kind, task=task.id, token=task.token, at=_iso(at), **extra)
            return

    async def _give_back(self, task: ClaimedTask) -> None:
        began = time.monotonic()
        try:
            at = await self.backend.release(Lease(task.id, task.token))
        except LeaseLost:
            return
        except TRANSIENT as exc:
            self._db_error("release", exc, began)
            return
        self.emit("released", task=task.id, token=task.token, at=_iso(at))

    def _lease_lost(self, running: _Running, operation: str) -> None:
        if running.finishing or running.runner.done():
            return  # the final write is fenced on its own
        running.cancel_reason = "lease_lost"
        running.runner.cancel()
        self.emit("lease_lost", task=running.task.id, token=running.task.token, operation=operation)

    def _lease_surely_expired(self, running: _Running) -> bool:
        return time.monotonic() - running.renewed_sent >= self.config.lease_duration

    def _expire_local_leases(self) -> None:
        for running in list(self._running.values()):
            if self._lease_surely_expired(running):
                self._lease_lost(running, "local_expiry")

    # -- helpers --------------------------------------------------------------------------

    def _free_slots(self) -> int:
        """Handlers that may start now: max_concurrent_tasks bounds handlers running at once.

        A task whose handler has returned keeps its lease until its final write lands but no
        slot, so the next claim overlaps the group-committed writes; at most as many again
        may be held in that state, so a stalled write path cannot pile up claims.
        """
        limit = self.config.max_concurrent_tasks
        writing = sum(1 for running in self._running.values() if running.finishing)
        return min(limit - (len(self._running) - writing), 2 * limit - len(self._running))

    async def _wait_for(self, event: asyncio.Event, seconds: float | None) -> bool:
        """Wait until ``event`` is set (True) or ``seconds`` have passed (False)."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
                return True
        return False

    def _db_ok(self) -> None:
        self._last_db_ok = time.monotonic()

    def _db_error(self, operation: str, exc: BaseException, began: float) -> None:
        """Report a failed database call and how long it took to fail (bounded, or a hang)."""
        elapsed = time.monotonic() - began
        log.warning("zart %s failed after %.2fs: %s", operation, elapsed, exc)
        error = f"{type(exc).__name__}: {exc}"[:500]
        self.emit("db_error", operation=operation, error=error, elapsed=round(elapsed, 3))


# Lifecycle events worth a log line, and at which level (-v shows INFO, -vv DEBUG).
_LOGGED = {
    "worker_started": logging.INFO,
    "worker_stopping": logging.INFO,
    "claimed": logging.DEBUG,
    "completed": logging.DEBUG,
    "failed": logging.INFO,
    "released": logging.INFO,
    "suspended": logging.DEBUG,
    "cancelled": logging.INFO,
    "lease_lost": logging.WARNING,
    "listen_lost": logging.WARNING,
    "write_error": logging.ERROR,
}
_DONE = {
    "complete": "completed",
    "fail": "failed",
    "release": "released",
    "suspend": "suspended",
    "cancel": "cancelled",
}
_Ending = tuple[str, Callable[[], Awaitable[datetime]], dict[str, Any]]


def _backoff(failures: int, cap: float) -> float:
    return float(min(cap, 0.05 * 2 ** min(failures, 10)))


def _iso(at: datetime) -> str:
    return at.isoformat()


def _describe(task: ClaimedTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "token": task.token,
        "attempt": task.attempt,
        "claimed_at": _iso(task.claimed_at),
        "lease_expires_at": _iso(task.lease_expires_at),
    }
