"""Idle load: statements per second one idle worker sends, at the default poll interval.

PostgreSQL and MySQL: counted on the wire by a proxy between that worker and the server
(every connection of the worker, its LISTEN connection included). SQLite has no wire: the
worker process counts what its engine sends (SQLAlchemy before_cursor_execute, BEGIN
IMMEDIATE included), enabled by ``$ZART_BENCH_STATEMENTS``.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from zart_conformance.provision import Target
from zart_ref import WorkerConfig
from zart_ref.urls import normalize_url

from .db import BenchDB
from .procs import processes, zart_worker
from .wire import COUNTERS, CountingProxy

SETTLE = 1.0
# The idle worker runs at the default: a window shorter than one interval may see no poll.
IDLE_POLL_INTERVAL = WorkerConfig().poll_interval
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def _through(target: Target, port: int) -> Target:
    url = normalize_url(target.url).set(host="127.0.0.1", port=port)
    if url.get_backend_name() == "postgresql":
        url = url.update_query_dict({"sslmode": "disable"})
    return Target(url.render_as_string(hide_password=False), target.schema, target.dialect)


def engine_statements(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def idle_load(db: BenchDB, seconds: float) -> dict[str, Any]:
    poll = IDLE_POLL_INTERVAL
    async with db.fresh("idle") as (target, _), AsyncExitStack() as stack:
        counted_file = db.run_dir / f"statements-{uuid.uuid4().hex[:8]}.txt"
        env: dict[str, str] = {}
        proxy: CountingProxy | None = None
        if target.dialect in COUNTERS:
            url = normalize_url(target.url)
            port = url.port or DEFAULT_PORTS[target.dialect]
            proxy = await stack.enter_async_context(
                CountingProxy(target.dialect, url.host or "127.0.0.1", port)
            )
            target = _through(target, proxy.port)
            method = "statements on the wire (proxy: PostgreSQL Execute/Query messages, "
            method += "MySQL COM_QUERY/STMT_PREPARE/STMT_EXECUTE), all the worker's connections"
        else:
            env["ZART_BENCH_STATEMENTS"] = str(counted_file)
            method = "statements the worker's engine sent (SQLAlchemy before_cursor_execute)"
        async with processes([zart_worker(target)], db.run_dir, env=env):
            await asyncio.sleep(SETTLE)
            before = proxy.statements if proxy else engine_statements(counted_file)
            await asyncio.sleep(seconds)
            after = proxy.statements if proxy else engine_statements(counted_file)
    per_second = (after - before) / seconds
    return {
        "seconds": seconds,
        "statements": after - before,
        "per_second": round(per_second, 3),
        "poll_interval": poll,
        "poll_intervals": round(seconds / poll, 2),
        "per_poll_interval": round(per_second * poll, 2),
        "method": method,
    }
