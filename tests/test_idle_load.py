"""An idle worker sends one statement per poll interval, counted on the wire.

Counted by the bench's own proxy (every connection of the worker, LISTEN's included), between
two of the worker's polls, so the count does not depend on how fast the machine is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import DIALECTS, SCALE, new_namespace, server_url
from tests.test_worker import Recorder
from zart_conformance.bench.wire import CountingProxy
from zart_conformance.provision import Target
from zart_ref import Pending, PoolConfig, Registry, SQLBackend, Worker, WorkerConfig
from zart_ref.urls import normalize_url


class Polls:
    """Records the proxy's statement count as each idle poll returns."""

    def __init__(self, backend: SQLBackend, proxy: CountingProxy) -> None:
        self.counts: list[int] = []
        self._arrived = asyncio.Event()
        read = backend.pending

        async def pending() -> Pending:
            result = await read()
            self.counts.append(proxy.statements)
            self._arrived.set()
            return result

        backend.pending = pending  # type: ignore[method-assign]

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(20 * SCALE):
            while len(self.counts) < count:
                self._arrived.clear()
                await self._arrived.wait()


@pytest.mark.parametrize("server", ["postgres", "mysql"])
async def test_an_idle_worker_sends_one_statement_per_poll(server: str) -> None:
    url = normalize_url(server_url(server))
    target = Target(url.render_as_string(hide_password=False), new_namespace(), DIALECTS[server])
    setup = SQLBackend(target.url, schema=target.schema)
    await setup.migrate()
    await setup.close()
    default_port = {"postgres": 5432, "mysql": 3306}[server]
    try:
        async with CountingProxy(
            DIALECTS[server], url.host or "", url.port or default_port
        ) as proxy:
            through: Any = url.set(host="127.0.0.1", port=proxy.port)
            if server == "postgres":
                through = through.update_query_dict({"ssl": "disable"})
            # A LISTEN keepalive would be due every 0.1 s (statement_timeout / 3), a sweep
            # every other poll: the polls must stand in for both.
            pool = PoolConfig(statement_timeout=0.3 * SCALE)
            backend = SQLBackend(through, schema=target.schema, pool=pool)
            polls = Polls(backend, proxy)
            config = WorkerConfig(
                poll_interval=0.05 * SCALE, lease_duration=30, orphan_sweep_interval=0.1 * SCALE
            )
            registry = Registry()
            recorder = Recorder(registry)
            try:
                async with Worker(backend, registry, config):
                    if server == "postgres":
                        await recorder.wait(lambda: bool(recorder.of("listening")))
                    await polls.wait(3)  # start-up done: every connection open
                    first = len(polls.counts)
                    await polls.wait(first + 10)
                    sent = polls.counts[first + 9] - polls.counts[first - 1]
            finally:
                await backend.close()
        assert sent == 10, f"{sent} statements over 10 idle polls"
    finally:
        await target.drop()
