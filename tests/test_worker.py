"""Worker logic against the in-memory backend: fast, no database, real asyncio timing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from unittest.mock import ANY

import pytest

from tests.conftest import SCALE
from zart_ref import (
    ConfigError,
    DatabaseUnavailable,
    NewTask,
    PoolConfig,
    Registry,
    RetryPolicy,
    Worker,
    WorkerConfig,
    current_task,
)
from zart_ref.memory import InMemoryBackend

FAST = WorkerConfig(
    poll_interval=0.05 * SCALE,
    max_tasks_per_poll=3,
    max_concurrent_tasks=4,
    shutdown_timeout=0.3 * SCALE,
    lease_duration=0.6 * SCALE,
)


class Recorder:
    """Collects the worker's lifecycle events, and lets a test wait for one."""

    def __init__(self, registry: Registry) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        registry.add_listener(self._on)

    def _on(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
        self._changed.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]

    async def wait(self, predicate: Callable[[], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds * SCALE):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


async def statuses(backend: InMemoryBackend) -> dict[str, str]:
    return {task_id: row.record.status for task_id, row in backend.rows.items()}


async def test_tasks_complete_with_their_results() -> None:
    registry, backend = Registry(), InMemoryBackend()

    @registry.task()
    async def double(payload: dict[str, int]) -> int:
        return payload["n"] * 2

    recorder = Recorder(registry)
    await backend.schedule([NewTask(f"t{i}", "double", {"n": i}) for i in range(10)])
    async with Worker(backend, registry, FAST):
        await recorder.wait(lambda: len(recorder.of("completed")) == 10)
    for i in range(10):
        record = await backend.get(f"t{i}")
        assert record is not None and (record.status, record.result) == ("completed", i * 2)
    assert max(len(c["tasks"]) for c in recorder.of("claimed")) <= FAST.max_tasks_per_poll


async def test_concurrency_never_exceeds_the_limit() -> None:
    registry, backend = Registry(), InMemoryBackend()
    running, peak = 0, 0

    @registry.task()
    async def slow(payload: None) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05 * SCALE)
        running -= 1

    recorder = Recorder(registry)
    await backend.schedule([NewTask(f"t{i}", "slow") for i in range(20)])
    async with Worker(backend, registry, FAST):
        await recorder.wait(lambda: len(recorder.of("completed")) == 20)
    assert peak == FAST.max_concurrent_tasks


async def test_a_task_writing_its_result_holds_no_slot_but_the_held_total_is_bounded() -> None:
    """Claims overlap the final writes, and a stalled write path stops them at twice the limit."""
    writes_open = asyncio.Event()

    class SlowWrites(InMemoryBackend):
        async def complete(self, lease: Any, result: Any) -> Any:
            await writes_open.wait()
            return await super().complete(lease, result)

    registry, backend = Registry(), SlowWrites()
    started: list[str] = []
    running, peak = 0, 0

    @registry.task()
    async def quick(payload: None) -> None:
        nonlocal running, peak
        started.append(current_task().task.id)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1

    recorder = Recorder(registry)
    await backend.schedule([NewTask(f"t{i:02d}", "quick") for i in range(12)])
    limit = FAST.max_concurrent_tasks
    async with Worker(backend, registry, FAST):
        # Every slot's handler has returned, so the worker claims past the limit...
        await recorder.wait(lambda: len(started) == 2 * limit)
        # ...and no further while those writes hang: a few more polls change nothing.
        polls = len(recorder.of("claimed"))
        await asyncio.sleep(5 * FAST.poll_interval)
        assert len(started) == 2 * limit and len(recorder.of("claimed")) == polls
        writes_open.set()
        await recorder.wait(lambda: len(recorder.of("completed")) == 12)
    assert peak <= limit


async def test_failures_retry_then_end_failed_with_the_error_kept() -> None:
    registry, backend = Registry(), InMemoryBackend()
    attempts = 0

    @registry.task(retry=RetryPolicy(max_attempts=3, backoff="fixed", base_delay=0.01, jitter=0))
    async def flaky(payload: None) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError(f"attempt {attempts} broke")

    recorder = Recorder(registry)
    await backend.schedule([NewTask("t", "flaky")])
    async with Worker(backend, registry, FAST):
        await recorder.wait(lambda: len(recorder.of("failed")) == 3)
    record = await backend.get("t")
    assert record is not None
    assert (record.status, record.attempts, attempts) == ("failed", 3, 3)
    assert record.error == "ValueError: attempt 3 broke"
    assert [e["retry_in"] for e in recorder.of("failed")] == [0.01, 0.01, None]


async def test_unknown_handler_fails_the_task_and_names_it() -> None:
    registry, backend = Registry(), InMemoryBackend()
    recorder = Recorder(registry)
    await backend.schedule([NewTask("t", "no-such-handler")])
    async with Worker(backend, registry, FAST):
        await recorder.wait(lambda: bool(recorder.of("failed")))
    record = await backend.get("t")
    assert record is not None and record.status == "failed"
    assert "no handler named 'no-such-handler'" in (record.error or "")


async def test_shutdown_finishes_short_tasks_and_releases_long_ones() -> None:
    registry, backend = Registry(), InMemoryBackend()
    cancelled: list[str] = []

    @registry.task()
    async def nap(payload: dict[str, Any]) -> str:
        try:
            await asyncio.sleep(payload["s"] * SCALE)
        except asyncio.CancelledError:
            cancelled.append(payload["id"])
            raise
        return "done"

    recorder = Recorder(registry)
    await backend.schedule(
        [
            NewTask("short", "nap", {"s": 0.1, "id": "short"}),
            NewTask("long", "nap", {"s": 30, "id": "long"}),
        ]
    )
    worker = Worker(backend, registry, FAST)
    runner = asyncio.create_task(worker.run())
    await recorder.wait(lambda: worker.in_flight == 2)
    worker.stop()
    await runner
    assert await statuses(backend) == {"short": "completed", "long": "scheduled"}
    assert cancelled == ["long"]
    long = await backend.get("long")
    assert long is not None and long.attempts == 0  # a release is not a failed attempt
    assert [e["task"] for e in recorder.of("released")] == ["long"]
    assert recorder.events[-1][0] == "worker_stopped"


async def test_a_lost_lease_stops_the_handler_and_writes_nothing() -> None:
    registry, backend = Registry(), InMemoryBackend()
    started, stopped = asyncio.Event(), asyncio.Event()

    @registry.task()
    async def forever(payload: None) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    recorder = Recorder(registry)
    await backend.schedule([NewTask("t", "forever")])
    async with Worker(backend, registry, FAST):
        await started.wait()
        backend.rows["t"].token = "stolen-by-another-claim"
        await asyncio.wait_for(stopped.wait(), 5 * SCALE)
        await recorder.wait(lambda: bool(recorder.of("lease_lost")))
    assert recorder.of("lease_lost")[0]["operation"] == "renew"
    assert (
        not recorder.of("completed") and not recorder.of("failed") and not recorder.of("released")
    )


class FlakyBackend(InMemoryBackend):
    """Fails the first claims as a database outage would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[Any]:
        if self.failures:
            self.failures -= 1
            raise DatabaseUnavailable("database down (test)")
        return await super().claim(worker_id, limit, lease_seconds)


async def test_database_errors_are_retried_never_read_as_no_work() -> None:
    registry, backend = Registry(), FlakyBackend(failures=3)

    @registry.task()
    async def noop(payload: None) -> None:
        return None

    recorder = Recorder(registry)
    await backend.schedule([NewTask("t", "noop")])
    worker = Worker(backend, registry, FAST)
    async with worker:
        await recorder.wait(lambda: bool(recorder.of("completed")))
        assert worker.is_healthy()
    assert len(recorder.of("db_error")) == 3


async def test_worker_is_unhealthy_before_the_database_answers() -> None:
    worker = Worker(FlakyBackend(failures=1000), Registry(), FAST)
    assert not worker.is_healthy()


@pytest.mark.parametrize("field", ["poll_interval", "lease_duration", "max_concurrent_tasks"])
def test_config_rejects_non_positive_values(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        WorkerConfig(**{field: 0})


def test_defaults_are_those_of_the_original_docs() -> None:
    config, pool = WorkerConfig(), PoolConfig()
    assert (config.poll_interval, config.max_tasks_per_poll) == (5.0, 10)
    assert (config.max_concurrent_tasks, config.shutdown_timeout) == (16, 30.0)
    assert config.heartbeat_every == config.lease_duration / 3
    assert (pool.max_connections, pool.min_connections, pool.acquire_timeout) == (20, 2, 30.0)


async def test_a_result_that_cannot_be_stored_fails_the_task_once() -> None:
    registry, backend = Registry(), InMemoryBackend()

    @registry.task()
    async def bad(payload: None) -> float:
        return float("nan")

    recorder = Recorder(registry)
    await backend.schedule([NewTask("t", "bad")])
    async with Worker(backend, registry, FAST):
        await recorder.wait(lambda: bool(recorder.of("failed")))
    record = await backend.get("t")
    assert record is not None and (record.status, record.attempts) == ("failed", 1)
    assert "result of task 't' is nan" in (record.error or "")


async def test_a_task_claimed_past_its_max_attempts_gives_up() -> None:
    registry, backend = Registry(), InMemoryBackend()
    ran: list[int] = []

    @registry.task(retry=RetryPolicy(max_attempts=2))
    async def crashy(payload: None) -> None:
        ran.append(1)

    recorder = Recorder(registry)
    await backend.schedule([NewTask("t", "crashy")])
    # Two earlier claims whose workers died (their leases expired, nothing was written).
    for _ in range(2):
        await backend.claim("dead", 1, 0)
        await backend.recover_orphans()
    async with Worker(backend, registry, FAST):
        await recorder.wait(lambda: bool(recorder.of("failed")))
    record = await backend.get("t")
    assert record is not None and record.status == "failed" and not ran
    assert "gave up after 2 attempts" in (record.error or "")


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"lease_duration": 3, "heartbeat_interval": 2}, "at most lease_duration / 3"),
        ({"lease_duration": float("inf")}, "lease_duration must be a positive number"),
        ({"poll_interval": float("nan")}, "poll_interval must be a positive number"),
        ({"lease_duration": 1e12}, "at most 604800"),
    ],
)
def test_settings_that_cannot_work_are_refused(settings: dict[str, float], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        WorkerConfig(**settings)  # type: ignore[arg-type]


class NotifyingBackend(InMemoryBackend):
    """Delivers a wake-up while a claim is in flight: the claim's snapshot missed the task
    that the notification announces."""

    def __init__(self) -> None:
        super().__init__()
        self.on_work: Callable[[], None] | None = None
        self.injected = False

    async def listen(self, on_work: Callable[[], None], on_state: Callable[[str], None]) -> None:
        self.on_work = on_work
        on_state("listening")
        on_work()  # as the SQL backend does on every subscription
        await asyncio.Event().wait()

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[Any]:
        claimed = await super().claim(worker_id, limit, lease_seconds)
        if self.on_work is not None and not self.injected:
            self.injected = True
            await super().schedule([NewTask("late", "noop")])
            self.on_work()  # NOTIFY arrives after the snapshot, before the claim returns
        return claimed


async def test_a_wake_up_during_a_claim_is_not_lost() -> None:
    registry, backend = Registry(), NotifyingBackend()

    @registry.task()
    async def noop(payload: None) -> None:
        return None

    recorder = Recorder(registry)
    slow_poll = WorkerConfig(poll_interval=60, lease_duration=10)
    async with Worker(backend, registry, slow_poll):
        await recorder.wait(lambda: bool(recorder.of("completed")), seconds=10)
    assert recorder.of("completed")[0]["task"] == "late"


class CountingBackend(InMemoryBackend):
    """Counts the reads an idle worker makes, and lets a test wait for the n-th poll."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.polled = asyncio.Event()

    async def pending(self) -> Any:
        self.calls.append("pending")
        self.polled.set()
        return await super().pending()

    async def claim(self, worker_id: str, limit: int, lease_seconds: float) -> list[Any]:
        self.calls.append("claim")
        return await super().claim(worker_id, limit, lease_seconds)

    async def recover_orphans(self) -> list[str]:
        self.calls.append("recover_orphans")
        return await super().recover_orphans()

    async def polls(self, count: int) -> None:
        async with asyncio.timeout(10 * SCALE):
            while self.calls.count("pending") < count:
                self.polled.clear()
                await self.polled.wait()


async def test_an_idle_worker_polls_with_one_read_that_stands_in_for_claim_and_sweep() -> None:
    registry, backend = Registry(), CountingBackend()

    @registry.task()
    async def noop(payload: None) -> None:
        return None

    recorder = Recorder(registry)
    # A sweep due every two poll intervals: the idle polls in between make it unnecessary.
    config = replace(FAST, orphan_sweep_interval=2 * FAST.poll_interval)
    async with Worker(backend, registry, config):
        await backend.polls(4)
        idle = list(backend.calls)
        await backend.schedule([NewTask("t", "noop")])
        await recorder.wait(lambda: bool(recorder.of("completed")))
    # Start-up claims at once; every quiet poll after it is a single pending() read.
    assert idle[0] == "claim" and set(idle[1:]) == {"pending"}, idle
    assert "recover_orphans" not in backend.calls


async def test_an_idle_poll_recovers_expired_leases_without_waiting_for_the_sweep() -> None:
    registry, backend = Registry(), CountingBackend()

    @registry.task()
    async def noop(payload: None) -> None:
        return None

    recorder = Recorder(registry)
    await backend.schedule([NewTask("orphan", "noop")])
    (dead,) = await backend.claim("dead-worker", 1, 0.001)  # its lease lapses at once
    config = replace(FAST, orphan_sweep_interval=3600)  # the sweep would come far too late
    async with Worker(backend, registry, config):
        await recorder.wait(lambda: bool(recorder.of("completed")))
    assert recorder.of("orphans_recovered") == [{"tasks": ["orphan"], "worker": ANY}]
    record = await backend.get("orphan")
    assert record is not None and record.attempts == 2 and dead.attempt == 1


async def test_handlers_that_return_at_once_leave_room_for_full_claims() -> None:
    """Handlers started by a claim take their first step before the next claim is sized: a
    worker whose handlers return at once claims full batches, not the rest of its slots."""
    registry, backend = Registry(), InMemoryBackend()

    @registry.task()
    async def instant(payload: None) -> None:
        return None

    recorder = Recorder(registry)
    await backend.schedule([NewTask(f"t{i:02d}", "instant") for i in range(30)])
    async with Worker(backend, registry, FAST):
        await recorder.wait(lambda: len(recorder.of("completed")) == 30)
    sizes = [len(claim["tasks"]) for claim in recorder.of("claimed")]
    assert sizes == [FAST.max_tasks_per_poll] * 10
