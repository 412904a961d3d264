"""Check a backend's declared capabilities against what it does, before any scenario runs.

A capability declared but absent would turn into confusing scenario failures (or, worse, into
scenarios that pass for the wrong reason), so the run stops at once and says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from zart_ref import Backend, NewTask, PoolConfig
from zart_ref.backend import Notifier
from zart_ref.importing import load_object
from zart_ref.urls import normalize_url

from .backends import Descriptor
from .provision import Server, Target, isolate

PROBE_TIMEOUT = 5.0
NOT_PROBED = "not probed: only the scenarios that need it can show it"
_SQL = {
    "postgresql": (
        "SELECT version()",
        "SELECT pg_try_advisory_lock(20261203)",
        "SELECT pg_advisory_unlock(20261203)",
    ),
    "mysql": (
        "SELECT version()",
        "SELECT GET_LOCK('zart.probe', 0)",
        "SELECT RELEASE_LOCK('zart.probe')",
    ),
    "sqlite": ("SELECT 'SQLite ' || sqlite_version()", None, None),
}


@dataclass
class ProbeReport:
    """What the probe found per capability (None: not probable), and why."""

    found: dict[str, bool | None] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    server_version: str = ""

    def note(self, capability: str, found: bool | None, detail: str) -> None:
        self.found[capability] = found
        self.details[capability] = detail

    def problems(self, declared: frozenset[str]) -> list[str]:
        """Declared capabilities the probe found absent."""
        return [
            f"declares {cap} but the probe found it absent: {self.details[cap]}"
            for cap in sorted(declared)
            if self.found.get(cap) is False
        ]

    def undeclared(self, declared: frozenset[str]) -> list[str]:
        """Present but not declared: the scenarios needing them are skipped for no reason."""
        return sorted(cap for cap, ok in self.found.items() if ok and cap not in declared)

    def to_json(self) -> dict[str, object]:
        return {"found": self.found, "details": self.details, "server_version": self.server_version}


async def probe(descriptor: Descriptor, server: Server, runs_root: Path) -> ProbeReport:
    """Probe in a namespace of its own, dropped afterwards."""
    run_id = f"probe-{descriptor.name}-{uuid.uuid4().hex[:6]}"
    run_dir = (runs_root / run_id).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    target = isolate(descriptor, server, run_id, run_dir)
    report = ProbeReport()
    tcp = normalize_url(target.url).get_backend_name() != "sqlite"
    where = f"the URL's scheme is {normalize_url(target.url).get_backend_name()}"
    report.note("client_server", tcp, f"{where}: workers {'do' if tcp else 'do not'} use TCP")
    report.note(
        "network_faults", tcp, f"{where}: a TCP proxy {'can' if tcp else 'cannot'} sit between"
    )
    report.note("concurrent_workers", None, NOT_PROBED)
    await _probe_sql(descriptor.dialect, target, report)
    factory = load_object(descriptor.factory, what=f"{descriptor.path}: backend")
    backend: Backend = factory(target.url, pool=PoolConfig(max_connections=2), schema=target.schema)
    try:
        await backend.migrate()
        await _probe_listen(backend, report)
    finally:
        await backend.close()
        await target.drop()
    return report


async def _probe_sql(dialect: str, target: Target, report: ProbeReport) -> None:
    version_sql, lock_sql, unlock_sql = _SQL[dialect]
    engine = create_async_engine(normalize_url(target.url))
    try:
        async with engine.connect() as conn:
            report.server_version = str((await conn.execute(text(version_sql))).scalar())
            if lock_sql is None or unlock_sql is None:
                report.note("advisory_locks", False, f"{dialect} has no advisory locks")
                return
            got = (await conn.execute(text(lock_sql))).scalar()
            await conn.execute(text(unlock_sql))
            report.note("advisory_locks", got == 1, f"{lock_sql} returned {got!r}")
    finally:
        await engine.dispose()


async def _probe_listen(backend: Backend, report: ProbeReport) -> None:
    """Subscribe, schedule one task, and see the subscription wake."""
    if not isinstance(backend, Notifier):
        report.note("listen_notify", False, f"{type(backend).__name__} has no listen()")
        return
    subscribed = asyncio.Event()
    woken = asyncio.Event()

    def on_state(state: str) -> None:
        if state == "listening":
            subscribed.set()

    listener = asyncio.create_task(backend.listen(woken.set, on_state))
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            done = asyncio.create_task(subscribed.wait())
            await asyncio.wait({listener, done}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            if not subscribed.is_set():
                report.note("listen_notify", False, "listen() returned without subscribing")
                return
            woken.clear()  # a new subscription wakes once by itself
            await backend.schedule([NewTask(id="zart-probe", name="zart.probe", payload=None)])
            await woken.wait()
        report.note("listen_notify", True, "a schedule woke the subscription")
    except TimeoutError:
        state = "no subscription" if not subscribed.is_set() else "no wake-up after a schedule"
        report.note("listen_notify", False, f"{state} within {PROBE_TIMEOUT:g}s")
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
