"""The bench run: every measurement on every backend, in one process, one after another."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from zart_conformance.backends import resolve_descriptor
from zart_conformance.provision import provision
from zart_ref.errors import ConfigError, DatabaseUnavailable

from . import peer
from .ceiling import ceiling_command
from .cleanup import cleanup
from .db import BenchDB
from .idle import IDLE_POLL_INTERVAL, idle_load
from .pickup import pickup
from .procs import BenchError
from .report import document
from .scheduling import scheduling
from .stats import median_run
from .suite_time import from_result_file, run_suite
from .throughput import drain_rate, worker_throughput

Say = Callable[[str], None]
Save = Callable[[dict[str, Any]], None]


@dataclass
class BenchOptions:
    tasks: int = 20_000
    singles: int = 200
    # Samples with LISTEN/NOTIFY; polling takes half as many, rounded up (each waits up to a
    # poll).
    pickup_samples: int = 200
    # The polling pickup test's worker polls this often (at the default, 5 s, pickup would be
    # ~2.5 s). Not the idle test's: that one runs at the worker's default (idle_poll_interval).
    pickup_poll_interval: float = 0.1
    idle_seconds: float = 30.0
    # Throughput and bulk scheduling are the median of this many runs (worker and ceiling
    # interleaved, so drift on the machine moves both sides).
    repeat: int = 3
    suite: bool = False
    suite_files: list[Path] = field(default_factory=list)
    run_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("ZART_RUN_DIR", ".zart-runs")) / "bench"
    )

    def settings(self) -> dict[str, Any]:
        """The options as JSON, with the idle test's poll interval (the worker's default)."""
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        settings["suite_files"] = [str(p) for p in self.suite_files]
        return {**settings, "idle_poll_interval": IDLE_POLL_INTERVAL}


async def bench(
    backends: list[str], options: BenchOptions, say: Say, save: Save | None = None
) -> dict[str, Any]:
    """Every backend's section, one after another; ``save`` gets the document after each
    finished backend, so an error in a later one keeps what was measured."""
    sections: dict[str, dict[str, Any]] = {}
    requested = list(dict.fromkeys(backends))
    doc: dict[str, Any] = {}
    async with servers(requested, options.run_dir.resolve()) as dbs:
        for db, server_version in dbs:
            with _naming(db):
                sections[db.name] = await _backend(db, server_version, options, say)
            doc = document(sections, options.settings(), requested)
            if save is not None:
                save(doc)
    return doc or document(sections, options.settings(), requested)


@asynccontextmanager
async def servers(names: list[str], run_dir: Path) -> AsyncIterator[list[tuple[BenchDB, str]]]:
    """Every backend's descriptor and server, and its server's version read through a fresh
    namespace, before anything is measured: every unknown name, missing server URL and
    unreachable server is said at once. The servers are closed at the end."""
    dbs: list[BenchDB] = []
    problems: list[str] = []
    async with cleanup() as closing:
        for name in names:
            try:
                descriptor = resolve_descriptor(name)
                server = provision(descriptor)
            except ConfigError as exc:
                problems.append(f"{name}: {exc}")
                continue
            closing.append(server.close)
            dbs.append(BenchDB(descriptor, server, run_dir))
        named = [db.name for db in dbs]
        problems += [
            f"{name}: asked for {named.count(name)} times (by different names or paths)"
            for name in dict.fromkeys(named)
            if named.count(name) > 1
        ]
        if problems:
            raise ConfigError("cannot bench every backend asked for:\n  " + "\n  ".join(problems))
        versions: list[tuple[BenchDB, str]] = []
        unreachable: list[str] = []
        for db in dbs:
            try:
                with _naming(db):
                    versions.append((db, await _server_version(db)))
            except DatabaseUnavailable as exc:
                unreachable.append(str(exc))
        if unreachable:
            raise DatabaseUnavailable("\n".join(unreachable))
        yield versions


@contextmanager
def _naming(db: BenchDB) -> Iterator[None]:
    """Errors of one backend, named: which backend, and where its server came from."""
    try:
        yield
    except DatabaseUnavailable as exc:
        env = db.descriptor.url_env
        where = f"server from ${env}" if env and db.server.container is None else db.server.how
        reason = " ".join(str(exc).split())  # one line: drivers' messages carry newlines
        raise DatabaseUnavailable(f"backend {db.name}, {where}: {reason}") from exc
    except BenchError as exc:
        raise BenchError(f"backend {db.name}: {exc}") from exc


async def _backend(
    db: BenchDB, server_version: str, options: BenchOptions, say: Say
) -> dict[str, Any]:
    name, descriptor = db.name, db.descriptor
    section: dict[str, Any] = {"server": server_version}
    # Other work on the machine moves every number: the 1/5/15-minute load at the start.
    section["load_average"] = [round(x, 2) for x in os.getloadavg()]

    async def step(label: str, measure: Callable[[], Awaitable[Any]]) -> Any:
        say(f"{name}: {label} ...")
        began = time.monotonic()
        result = await measure()
        say(f"{name}: {label}: {_headline(result)} ({time.monotonic() - began:.1f}s)")
        return result

    processes = [1, 2] if "concurrent_workers" in descriptor.capabilities else [1]
    count = options.tasks
    section["worker"], section["ceiling"] = {}, {}
    ceiling = ceiling_command(db.run_dir)
    for n in processes:
        workers, ceilings = [], []
        for run in _runs(options.repeat):
            workers.append(
                await step(
                    f"zart worker, {n} process(es){run}",
                    lambda n=n: worker_throughput(db, count, n),
                )
            )
            ceilings.append(
                await step(
                    f"raw-SQL ceiling, {n} process(es){run}",
                    lambda n=n: drain_rate(db, count, n, ceiling),
                )
            )
        section["worker"][str(n)] = median_run(workers, interleaved=True)
        section["ceiling"][str(n)] = median_run(ceilings, interleaved=True)
    if len(processes) == 1:
        section["worker"]["2"] = section["ceiling"]["2"] = {
            "skipped": f"backend {name} does not declare concurrent_workers"
        }
    schedules = [
        await step(f"scheduling{run}", lambda: scheduling(db, count, options.singles))
        for run in _runs(options.repeat)
    ]
    by_bulk = median_run([{**s, "per_second": s["bulk"]["per_second"]} for s in schedules])
    section["scheduling"] = {
        "bulk": {**by_bulk["bulk"], "runs": by_bulk["runs"], "statistic": by_bulk["statistic"]},
        "single": by_bulk["single"],
    }
    section["pickup"] = {}
    if "listen_notify" in descriptor.capabilities:
        section["pickup"]["listen"] = await step(
            "pickup, LISTEN/NOTIFY",
            lambda: pickup(db, options.pickup_samples, listen=True, poll=5.0),
        )
    poll = options.pickup_poll_interval
    section["pickup"]["poll"] = await step(
        f"pickup, polling every {poll:g}s",
        lambda: pickup(db, -(-options.pickup_samples // 2), listen=False, poll=poll),
    )
    section["idle"] = await step("idle load", lambda: idle_load(db, options.idle_seconds))
    section["peer"] = await _peer(db, options, processes, step)
    section["suite"] = await _suite(name, options, db, step)
    return section


async def _peer(db: BenchDB, options: BenchOptions, processes: list[int], step: Any) -> Any:
    if db.dialect != "postgresql":
        return {"skipped": f"no peer queue for {db.dialect} in the bench"}
    missing = peer.available()
    if missing:
        return {"skipped": missing}
    assert db.server.url is not None
    url = db.server.url
    return await step(
        "pgqueuer (bulk, drain, pickup)",
        lambda: peer.peer_section(
            url, db.run_dir, options.tasks, processes, options.pickup_samples, options.repeat
        ),
    )


async def _suite(name: str, options: BenchOptions, db: BenchDB, step: Any) -> Any:
    for path in options.suite_files:
        summary = from_result_file(path)
        if summary["backend"] == name:
            return summary
    if not options.suite:
        return {"skipped": "not asked for (--suite, or --suite-json with a result file)"}
    return await step("conformance suite", lambda: run_suite(name, db.run_dir))


async def _server_version(db: BenchDB) -> str:
    sqlite = db.dialect == "sqlite"
    query = "SELECT 'SQLite ' || sqlite_version()" if sqlite else "SELECT version()"
    async with db.fresh("version") as (_, backend), backend.engine.connect() as conn:
        return str((await conn.execute(text(query))).scalar())


def _runs(repeat: int) -> list[str]:
    """Labels for ``repeat`` runs: none for one, " (run i/n)" for several."""
    return [""] if repeat == 1 else [f" (run {i}/{repeat})" for i in range(1, repeat + 1)]


def _headline(result: Any) -> str:
    if not isinstance(result, dict):
        return str(result)
    if "per_second" in result and "statements" not in result:
        return f"{result['per_second']:,.0f}/s"
    if "p50_ms" in result:
        return f"p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms"
    if "statements" in result:
        return f"{result['per_second']:.2f} statements/s ({result['per_poll_interval']} per poll)"
    if "bulk" in result and "single" in result:
        single = result["single"]
        return f"bulk {result['bulk']['per_second']:,.0f}/s, single p50 {single['p50_ms']:.1f} ms"
    if "worker" in result and "name" in result:
        rates = ", ".join(f"{n}p {r['per_second']:,.0f}/s" for n, r in result["worker"].items())
        return f"{result['name']}: bulk {result['bulk']['per_second']:,.0f}/s, {rates}"
    if "seconds" in result:
        return f"{result['seconds']}s"
    return ""
