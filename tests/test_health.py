"""The health endpoint over real HTTP: in-process, and on a real worker process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp

from tests.conftest import SCALE, eventually, worker_args
from tests.test_worker import FAST, FlakyBackend
from zart_conformance.provision import Target
from zart_ref import NewTask, Registry, SQLBackend, Worker
from zart_ref.health import HealthServer


async def get(port: int, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_not_ready_while_the_database_does_not_answer() -> None:
    worker = Worker(FlakyBackend(failures=10**6), Registry(), FAST)
    async with HealthServer(worker, port=0) as server, worker:
        assert (await get(server.port, "/livez"))[0] == 200
        status, body = await get(server.port, "/readyz")
        assert status == 503 and '"healthy": false' in body
        _, metrics = await get(server.port, "/metrics")
        assert "zart_worker_healthy 0.0" in metrics


async def test_worker_process_reports_ready_and_counts_its_work(db: Target, tmp_path: Path) -> None:
    backend = SQLBackend(db.url, schema=db.schema)
    await backend.migrate()
    await backend.schedule([NewTask(f"t{i}", "echo", i) for i in range(4)])
    args = worker_args(db, "--health-port", "0")
    env = {**os.environ, "ZART_EVENT_DIR": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(*args, env=env, stderr=asyncio.subprocess.PIPE)
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30 * SCALE):
            line = (await process.stderr.readline()).decode()
        match = re.search(r"health endpoint on http://127.0.0.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))

        async def all_counted() -> bool:
            return "zart_tasks_completed_total 4.0" in (await get(port, "/metrics"))[1]

        await eventually(all_counted)
        status, body = await get(port, "/readyz")
        assert status == 200 and '"healthy": true' in body
        metrics = (await get(port, "/metrics"))[1]
        assert "zart_tasks_claimed_total 4.0" in metrics
        assert "zart_tasks_in_flight 0.0" in metrics
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30 * SCALE) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await backend.close()
