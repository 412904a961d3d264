"""Durable workflows on every backend: steps, sleeps, events, cancellation, timeouts."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import SCALE
from tests.test_worker import Recorder
from zart_conformance.provision import Target
from zart_ref import (
    Client,
    Registry,
    RetryPolicy,
    SQLBackend,
    UnknownExecution,
    Worker,
    WorkerConfig,
    sleep,
    step,
    wait_for_event,
)

CONFIG = WorkerConfig(poll_interval=0.1 * SCALE, lease_duration=5 * SCALE)


@pytest.fixture
async def client(db: Target) -> AsyncIterator[Client]:
    backend = SQLBackend(db.url, schema=db.schema)
    await backend.migrate()
    async with Client(backend) as c:
        yield c
    await backend.close()


async def finished(client: Client, execution_id: str) -> dict[str, Any]:
    return await client.wait(execution_id, timeout=20 * SCALE, poll=0.05)


async def test_completed_steps_are_replayed_never_run_again(client: Client) -> None:
    registry, runs = Registry(), Counter[str]()

    def record(name: str, value: int) -> int:
        runs[name] += 1
        return value

    @registry.workflow(retry=RetryPolicy(max_attempts=3, base_delay=0.01, jitter=0))
    async def pipeline(payload: dict[str, int]) -> int:
        a = await step("one", record, "one", payload["x"])
        b = await step("two", record, "two", a + 1)
        if runs["crash"] == 0:
            runs["crash"] += 1
            raise RuntimeError("crash between step two and step three")
        return int(await step("three", record, "three", b * 10))

    execution_id, created = await client.start("pipeline", {"x": 4})
    assert created
    async with Worker(client.backend, registry, CONFIG):
        status = await finished(client, execution_id)
    assert (status["status"], status["result"], status["steps_completed"]) == ("completed", 50, 3)
    assert runs == {"one": 1, "two": 1, "three": 1, "crash": 1}


async def test_a_failing_step_retries_in_place_with_its_policy(client: Client) -> None:
    registry, calls = Registry(), Counter[str]()

    async def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ValueError("not yet")
        return "ok"

    @registry.workflow(retry=RetryPolicy(max_attempts=1))
    async def wf(payload: None) -> str:
        policy = RetryPolicy(max_attempts=3, backoff="linear", base_delay=0.01, jitter=0)
        return str(await step("flaky", flaky, retry=policy))

    execution_id, _ = await client.start("wf")
    async with Worker(client.backend, registry, CONFIG):
        status = await finished(client, execution_id)
    assert (status["status"], status["result"], calls["flaky"]) == ("completed", "ok", 3)


async def test_durable_sleep_frees_the_worker_slot_and_wakes_on_time(client: Client) -> None:
    registry = Registry()
    recorder = Recorder(registry)

    @registry.workflow()
    async def napper(payload: None) -> str:
        await step("before", lambda: "a")
        await sleep("nap", 0.6 * SCALE)
        return str(await step("after", lambda: "b"))

    execution_id, _ = await client.start("napper")
    worker = Worker(client.backend, registry, CONFIG)
    async with worker:
        await recorder.wait(lambda: bool(recorder.of("suspended")))
        status = await client.status(execution_id)
        assert status["status"] == "scheduled" and worker.in_flight == 0
        status = await finished(client, execution_id)
    assert status["status"] == "completed" and status["result"] == "b"
    suspended_at = recorder.of("suspended")[0]["at"]
    assert status["finished_at"] > suspended_at


async def test_an_event_delivered_before_the_wait_is_consumed(client: Client) -> None:
    registry = Registry()

    @registry.workflow()
    async def approval(payload: None) -> Any:
        await sleep("first", 0.3 * SCALE)
        return await wait_for_event("approved", timeout=30)

    execution_id, _ = await client.start("approval")
    assert await client.event(execution_id, "approved", {"by": "ada"}) is True
    assert await client.event(execution_id, "approved", {"by": "eve"}) is False
    async with Worker(client.backend, registry, CONFIG):
        status = await finished(client, execution_id)
    assert status["result"] == {"by": "ada"}


async def test_an_event_wakes_a_waiting_execution(client: Client) -> None:
    registry = Registry()
    recorder = Recorder(registry)

    @registry.workflow()
    async def approval(payload: None) -> Any:
        return await wait_for_event("approved", timeout=3600)

    execution_id, _ = await client.start("approval")
    async with Worker(client.backend, registry, CONFIG):
        await recorder.wait(lambda: bool(recorder.of("suspended")))
        assert (await client.status(execution_id))["waiting_for"] == "approved"
        assert await client.event(execution_id, "approved", 42)
        status = await finished(client, execution_id)
    assert (status["status"], status["result"]) == ("completed", 42)


async def test_a_wait_fails_cleanly_at_its_timeout(client: Client) -> None:
    registry = Registry()

    @registry.workflow()
    async def approval(payload: None) -> Any:
        return await wait_for_event("approved", timeout=0.3 * SCALE)

    execution_id, _ = await client.start("approval")
    async with Worker(client.backend, registry, CONFIG):
        status = await finished(client, execution_id)
    assert status["status"] == "failed"
    assert "no event 'approved'" in status["error"]


async def test_cancel_stops_a_running_step_and_starts_no_other(client: Client) -> None:
    registry, started = Registry(), asyncio.Event()
    later = Counter[str]()

    async def long_step() -> None:
        started.set()
        await asyncio.sleep(3600)

    @registry.workflow()
    async def job(payload: None) -> None:
        await step("long", long_step)
        await step("later", lambda: later.update(["ran"]))

    execution_id, _ = await client.start("job")
    config = WorkerConfig(poll_interval=0.1, lease_duration=0.6 * SCALE)
    async with Worker(client.backend, registry, config):
        await asyncio.wait_for(started.wait(), 20 * SCALE)
        assert await client.cancel(execution_id) == "running"
        status = await finished(client, execution_id)
    assert status["status"] == "cancelled" and not later


async def test_cancel_of_a_scheduled_execution_is_immediate(client: Client) -> None:
    execution_id, _ = await client.start("anything", delay=3600)
    assert await client.cancel(execution_id) == "cancelled"
    assert (await client.status(execution_id))["status"] == "cancelled"
    with pytest.raises(UnknownExecution, match="no execution with id 'nope'"):
        await client.cancel("nope")


async def test_execution_timeout_fails_the_execution(client: Client) -> None:
    registry = Registry()

    @registry.workflow(timeout=0.5 * SCALE)
    async def slow(payload: None) -> None:
        await asyncio.sleep(3600)

    execution_id, _ = await client.start("slow")
    async with Worker(client.backend, registry, CONFIG):
        status = await finished(client, execution_id)
    assert status["status"] == "failed" and "timeout" in status["error"]


async def test_start_is_idempotent_on_the_execution_id(client: Client) -> None:
    assert await client.start("wf", {"v": 1}, id="order-7") == ("order-7", True)
    assert await client.start("wf", {"v": 2}, id="order-7") == ("order-7", False)
    listed = await client.list()
    assert [s["id"] for s in listed] == ["order-7"]
    with pytest.raises(TimeoutError):
        await client.wait("order-7", timeout=0.2)


async def test_status_is_json_and_names_progress(client: Client) -> None:
    registry, inside, release = Registry(), asyncio.Event(), asyncio.Event()

    async def held() -> int:
        inside.set()
        await release.wait()
        return 2

    @registry.workflow()
    async def two(payload: None) -> int:
        await step("a", lambda: 1)
        return int(await step("b", held))

    execution_id, _ = await client.start("two", id="x-1")
    seen: list[tuple[str, int]] = []
    async with Worker(client.backend, registry, CONFIG):
        await asyncio.wait_for(inside.wait(), 20 * SCALE)
        during = await client.status(execution_id)
        release.set()
        status = await client.wait(
            execution_id,
            20 * SCALE,
            poll=0.01,
            on_progress=lambda s: seen.append((s["status"], s["steps_completed"])),
        )
    assert (during["status"], during["current_step"], during["steps_completed"]) == (
        "running",
        "b",
        1,
    )
    assert json.loads(json.dumps(status)) == status
    assert seen[-1] == ("completed", 2) and status["current_step"] is None
