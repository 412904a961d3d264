"""The peer queue on PostgreSQL: pgqueuer's default worker, same tasks, same run.

Run as ``python -m zart_conformance.bench.peer`` it is one pgqueuer worker process: a
QueueManager with its defaults (batch 10, LISTEN/NOTIFY) and the bench's no-op and stamp
entrypoints, in the schema ``$PGQUEUER_SCHEMA``, stopped by SIGTERM. The rest of the module
drives it from the bench: install, bulk enqueue, drain, and the span read from pgqueuer's
own log table (database clock, first pick to last success).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zart_ref.urls import normalize_url

from . import INSTALL_BENCH
from .cleanup import cleanup
from .db import DRAIN_TIMEOUT
from .pickup import sample
from .procs import BenchError, check_alive, processes
from .stamps import mark_ready, write_stamp
from .stats import median_run

ENTRY = [sys.executable, "-m", "zart_conformance.bench.peer"]


def available() -> str | None:
    """None when pgqueuer can be imported, else why not."""
    try:
        import pgqueuer  # noqa: F401
    except ModuleNotFoundError:
        return f"pgqueuer is not installed ({INSTALL_BENCH})"
    return None


def version() -> str:
    import pgqueuer

    return str(pgqueuer.__version__)


def dsn(url: str) -> str:
    return normalize_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _use_schema(schema: str) -> None:
    """pgqueuer reads its schema from the environment once per process."""
    from pgqueuer.domain.settings import db_settings

    os.environ["PGQUEUER_SCHEMA"] = schema
    db_settings.cache_clear()


@dataclass
class Peer:
    """One pgqueuer installation in its own schema, driven over one asyncpg connection."""

    url: str
    schema: str
    conn: Any
    queries: Any

    @property
    def env(self) -> dict[str, str]:
        return {"PGQUEUER_SCHEMA": self.schema, "ZART_BENCH_PGQ_DSN": dsn(self.url)}

    async def enqueue(self, entrypoint: str, payloads: list[bytes | None]) -> None:
        count = len(payloads)
        await self.queries.enqueue([entrypoint] * count, payloads, [0] * count)

    async def wait_empty(self, procs: list[asyncio.subprocess.Process]) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        queue = f'"{self.schema}".pgqueuer'
        while await self.conn.fetchval(f"SELECT count(*) FROM {queue}"):
            check_alive(procs)
            if time.monotonic() > deadline:
                raise BenchError(f"pgqueuer did not drain within {DRAIN_TIMEOUT:g}s")
            await asyncio.sleep(0.1)

    async def span(self) -> float:
        """Seconds from the first pick to the last success in pgqueuer's log."""
        row = await self.conn.fetchrow(
            "SELECT min(created) FILTER (WHERE status = 'picked') AS first,"
            " max(created) FILTER (WHERE status = 'successful') AS last"
            f' FROM "{self.schema}".pgqueuer_log'
        )
        return float((row["last"] - row["first"]).total_seconds())

    async def reset(self) -> None:
        await self.conn.execute(f'TRUNCATE "{self.schema}".pgqueuer, "{self.schema}".pgqueuer_log')


@asynccontextmanager
async def installed(url: str) -> AsyncIterator[Peer]:
    """pgqueuer's schema, installed fresh for the bench and dropped afterwards."""
    import asyncpg
    from pgqueuer import Queries
    from pgqueuer.db import AsyncpgDriver

    schema = f"zart_bench_pgq_{uuid.uuid4().hex[:8]}"
    _use_schema(schema)
    conn = await asyncpg.connect(dsn(url))

    async def drop() -> None:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    async with cleanup(drop, conn.close):
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
        yield Peer(url, schema, conn, queries)


async def peer_section(
    url: str, run_dir: Path, count: int, workers: list[int], samples: int, repeat: int = 1
) -> dict[str, Any]:
    """pgqueuer's bulk enqueue, drain rate with 1..n processes (median of ``repeat`` runs
    each) and pickup latency."""
    result: dict[str, Any] = {"name": f"pgqueuer {version()}", "worker": {}}
    async with installed(url) as peer:
        bulks = []
        for _ in range(repeat):
            await peer.reset()
            began = time.perf_counter()
            await peer.enqueue("noop", [None] * count)
            bulk = time.perf_counter() - began
            bulks.append(
                {"tasks": count, "seconds": round(bulk, 4), "per_second": round(count / bulk, 1)}
            )
        result["bulk"] = median_run(bulks)
        for processes_count in workers:
            drains = []
            for _ in range(repeat):
                await peer.reset()
                command = [ENTRY] * processes_count
                async with processes(command, run_dir, env=peer.env) as procs:
                    await peer.enqueue("noop", [None] * count)
                    await peer.wait_empty(procs)
                seconds = await peer.span()
                drains.append(
                    {
                        "tasks": count,
                        "processes": processes_count,
                        "seconds": round(seconds, 4),
                        "per_second": round(count / seconds, 1),
                    }
                )
            result["worker"][str(processes_count)] = median_run(drains)
        await peer.reset()
        stamps = run_dir / f"stamps-pgq-{uuid.uuid4().hex[:8]}.txt"

        async def schedule(task_id: str) -> None:
            await peer.enqueue("stamp", [task_id.encode()])

        env = {**peer.env, "ZART_BENCH_STAMPS": str(stamps)}
        async with processes([ENTRY], run_dir, env=env):
            result["pickup"] = {
                **await sample(schedule, stamps, samples, 0.02),
                "wake_up": "LISTEN/NOTIFY",
            }
    return result


async def _serve() -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    conn = await asyncpg.connect(os.environ["ZART_BENCH_PGQ_DSN"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Nothing, like the zart bench handler."""

    @pgq.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        write_stamp((job.payload or b"").decode())

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    mark_ready()
    await pgq.run()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(_serve())
