"""LISTEN/NOTIFY on PostgreSQL: wake-ups far below the poll interval, and re-subscription."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import SCALE
from tests.test_worker import Recorder
from zart_ref import Lease, NewTask, Registry, SQLBackend, Worker, WorkerConfig

# Polling alone would take a minute: any pickup within the test's patience came from NOTIFY.
SLOW_POLL = WorkerConfig(poll_interval=60, lease_duration=10 * SCALE)


# The shared `backend` fixture, on PostgreSQL only: LISTEN/NOTIFY is a PostgreSQL feature.
pytestmark = pytest.mark.parametrize("db", ["postgres"], indirect=True)


def echo_registry() -> Registry:
    registry = Registry()

    @registry.task()
    async def echo(payload: int) -> int:
        return payload

    return registry


async def test_notify_wakes_a_worker_long_before_its_poll(backend: SQLBackend) -> None:
    registry = echo_registry()
    recorder = Recorder(registry)
    async with Worker(backend, registry, SLOW_POLL):
        await recorder.wait(lambda: bool(recorder.of("listening")))
        await backend.schedule([NewTask("t1", "echo", 1)])
        await recorder.wait(lambda: bool(recorder.of("completed")))
    record = await backend.get("t1")
    assert record is not None and record.result == 1


@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
async def test_the_listener_connects_with_the_urls_sslmode(
    backend: SQLBackend, sslmode: str
) -> None:
    """libpq's sslmode reaches asyncpg as ssl; the listener's own connect must translate it
    back (as ?ssl=... it went to the server as a setting, and every subscription failed)."""
    url = backend.url.update_query_dict({"sslmode": sslmode})
    with_ssl = SQLBackend(url, schema=backend.schema)
    registry = echo_registry()
    recorder = Recorder(registry)
    try:
        async with Worker(with_ssl, registry, SLOW_POLL):
            await recorder.wait(lambda: bool(recorder.of("listening")))
            await with_ssl.schedule([NewTask("t-ssl", "echo", 7)])
            await recorder.wait(lambda: bool(recorder.of("completed")))
        assert not recorder.of("listen_lost")
    finally:
        await with_ssl.close()


async def test_listener_subscribes_again_after_its_connection_is_killed(
    backend: SQLBackend,
) -> None:
    registry = echo_registry()
    recorder = Recorder(registry)
    async with Worker(backend, registry, SLOW_POLL):
        await recorder.wait(lambda: len(recorder.of("listening")) == 1)
        async with backend.engine.begin() as conn:
            killed = await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": f"zart-listener:{backend.channel}"[:63]},
            )
            assert killed.scalars().all() == [True]
        await recorder.wait(lambda: len(recorder.of("listening")) == 2)
        assert recorder.of("listen_lost")
        await backend.schedule([NewTask("t2", "echo", 2)])
        await recorder.wait(lambda: bool(recorder.of("completed")))


async def test_released_tasks_wake_other_workers(backend: SQLBackend) -> None:
    registry = echo_registry()
    recorder = Recorder(registry)
    await backend.schedule([NewTask("t3", "echo", 3)])
    (task,) = await backend.claim("someone-else", 1, 30)
    async with Worker(backend, registry, SLOW_POLL):
        await recorder.wait(lambda: bool(recorder.of("listening")))
        await backend.release(Lease(task.id, task.token))
        await recorder.wait(lambda: bool(recorder.of("completed")))
