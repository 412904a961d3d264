"""LISTEN/NOTIFY on PostgreSQL: wake-ups far below the poll interval, and re-subscription."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from tests.conftest import SCALE, new_namespace, server_url
from tests.test_worker import Recorder
from zart_conformance.provision import Target
from zart_ref import Lease, NewTask, Registry, SQLBackend, Worker, WorkerConfig

# Polling alone would take a minute: any pickup within the test's patience came from NOTIFY.
SLOW_POLL = WorkerConfig(poll_interval=60, lease_duration=10 * SCALE)


@pytest.fixture
async def pg() -> AsyncIterator[SQLBackend]:
    target = Target(server_url("postgres"), new_namespace(), "postgresql")
    backend = SQLBackend(target.url, schema=target.schema)
    await backend.migrate()
    try:
        yield backend
    finally:
        await backend.close()
        await target.drop()


def echo_registry() -> Registry:
    registry = Registry()

    @registry.task()
    async def echo(payload: int) -> int:
        return payload

    return registry


async def test_notify_wakes_a_worker_long_before_its_poll(pg: SQLBackend) -> None:
    registry = echo_registry()
    recorder = Recorder(registry)
    async with Worker(pg, registry, SLOW_POLL):
        await recorder.wait(lambda: bool(recorder.of("listening")))
        await pg.schedule([NewTask("t1", "echo", 1)])
        await recorder.wait(lambda: bool(recorder.of("completed")))
    record = await pg.get("t1")
    assert record is not None and record.result == 1


async def test_listener_subscribes_again_after_its_connection_is_killed(pg: SQLBackend) -> None:
    registry = echo_registry()
    recorder = Recorder(registry)
    async with Worker(pg, registry, SLOW_POLL):
        await recorder.wait(lambda: len(recorder.of("listening")) == 1)
        async with pg.engine.begin() as conn:
            killed = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": f"zart-listener:{pg.channel}"[:63]},
            )
            assert killed.scalars().all() == [True]
        await recorder.wait(lambda: len(recorder.of("listening")) == 2)
        assert recorder.of("listen_lost")
        await pg.schedule([NewTask("t2", "echo", 2)])
        await recorder.wait(lambda: bool(recorder.of("completed")))


async def test_released_tasks_wake_other_workers(pg: SQLBackend) -> None:
    registry = echo_registry()
    recorder = Recorder(registry)
    await pg.schedule([NewTask("t3", "echo", 3)])
    (task,) = await pg.claim("someone-else", 1, 30)
    async with Worker(pg, registry, SLOW_POLL):
        await recorder.wait(lambda: bool(recorder.of("listening")))
        await pg.release(Lease(task.id, task.token))
        await recorder.wait(lambda: bool(recorder.of("completed")))
