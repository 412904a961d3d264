"""Scenarios are data: a TOML file per scenario, validated on load.

A scenario names its contract clauses, the capabilities it needs, a workload, the workers, a
fault schedule and the evidence it expects. ``[sequential]`` holds overrides for backends that
cannot run two worker processes at once (SQLite): the same fault, one process at a time.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from zart_ref.config import PoolConfig, WorkerConfig
from zart_ref.errors import ConfigError

from .app import PARAMS
from .app import registry as app_registry
from .checker import COUNTERS
from .schema import DataError, Table, load_toml

CAPABILITIES = {
    "concurrent_workers": "several worker processes may run against one database at once",
    "listen_notify": "the database can wake workers on new work (PostgreSQL LISTEN/NOTIFY)",
    "advisory_locks": "the database has advisory locks (used to serialize migrations)",
    "network_faults": "worker connections can be routed through toxiproxy",
    "client_server": "workers reach the database over TCP, so their connections can be counted",
}
# Families group scenarios for selection: ``pytest -m zart_network``.
FAMILIES = {
    "claims": "who gets a task: atomic, bounded claims",
    "leases": "how long a claim holds: leases, heartbeats, fencing, the database clock",
    "lifecycle": "worker lifecycle: shutdown, retries, connection pools",
    "network": "what the network does to the worker: partitions, latency, cuts",
    "durable": "durable execution: steps, sleeps, events, cancellation",
}
ACTIONS = {
    "kill": "SIGKILL the target worker",
    "stop": "SIGSTOP the target worker (a pause: it keeps its sockets and its stale leases)",
    "cont": "SIGCONT the target worker",
    "term": "SIGTERM the target worker (graceful shutdown)",
    "start": "start a new worker process under the target's name",
    "schedule": "schedule a workload group declared with at_start = false (params: group)",
    "event": "deliver an event to every execution of a group (params: group, name, data)",
    "cancel": "cancel every execution of a group (params: group)",
    # Network faults on the target's own proxy (see [network] proxied).
    "partition": "black-hole the target's database traffic both ways (timeout toxic, 0)",
    "latency": "delay the target's traffic both ways (params: latency, jitter in ms)",
    "reset": "reset the target's connections on their next data (reset_peer toxic)",
    "slow_close": "delay the close of the target's connections (params: delay in ms)",
    "bandwidth": "throttle the target's traffic (params: rate in KB/s; 0 holds it)",
    "heal": "remove every toxic from the target's proxy",
    "down": "disable the target's proxy: open connections closed, new ones refused",
    "up": "enable the target's proxy again",
}
_GROUP_ACTIONS = {"schedule", "event", "cancel"}
LISTENER = ".listen"
NETWORK_ACTIONS = {
    "partition",
    "latency",
    "reset",
    "slow_close",
    "bandwidth",
    "heal",
    "down",
    "up",
}
TRIGGER_EVENTS = {
    "handler_start",
    "handler_end",
    "handler_cancelled",
    "claimed",
    "completed",
    "lease_lost",
    "released",
    "worker_started",
    "worker_stopped",
    "listening",
    "listen_lost",
    "step_done",
    "step_start",
    "suspended",
    "wait_begin",
}
_POOL_TIME_FIELDS = {"acquire_timeout", "connect_timeout", "statement_timeout"}
_TIME_FIELDS = {f.name for f in fields(WorkerConfig)} - {
    "max_tasks_per_poll",
    "max_concurrent_tasks",
}


@dataclass(frozen=True)
class TaskGroup:
    count: int
    handler: str
    params: dict[str, Any]
    prefix: str
    expect_status: str
    at_start: bool = True


@dataclass(frozen=True)
class Trigger:
    """Fire ``delay`` seconds after the run starts, after another fault, or after ``count``
    events of kind ``event`` (optionally from one worker) have been logged."""

    delay: float = 0.0
    after: str | None = None
    event: str | None = None
    worker: str | None = None
    count: int = 1

    def describe(self) -> str:
        parts = []
        if self.event:
            parts.append(
                f"{self.count} x {self.event}" + (f" on {self.worker}" if self.worker else "")
            )
        if self.after:
            parts.append(f"after {self.after}")
        if self.delay:
            parts.append(f"+{self.delay:g}s")
        return ", ".join(parts) or "at start"


@dataclass(frozen=True)
class Fault:
    id: str
    action: str
    target: str
    when: Trigger
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkPlan:
    """Which workers reach the database through a proxy of their own, and how they start."""

    proxied: list[str] = field(default_factory=list)
    start_down: list[str] = field(default_factory=list)
    health: bool = False


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    family: str
    path: Path
    clauses: list[str]
    requires: list[str]
    description: str
    workload: list[TaskGroup]
    workers: int
    worker_config: dict[str, Any]
    pool_config: dict[str, Any]
    clock_offsets: dict[str, str]
    faults: list[Fault]
    network: NetworkPlan
    expect_min: dict[str, int]
    expect_max: dict[str, int]
    expect_status: str
    timeout: float
    settle: float
    sequential: dict[str, Any] = field(default_factory=dict)
    # Why the scenario exists although no mutant fails it (docs/mutation-matrix.md).
    without_mutant: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def worker_names(self) -> list[str]:
        return [f"w{i}" for i in range(self.workers)]

    def for_capabilities(self, capabilities: set[str]) -> Scenario:
        """The scenario as it runs on a backend with ``capabilities``."""
        if "concurrent_workers" in capabilities or not self.sequential:
            return self
        return _parse(_without_sequential(self.raw, self.sequential), self.path)

    def config_for(self, scale: float) -> WorkerConfig:
        values = {k: (v * scale if k in _TIME_FIELDS else v) for k, v in self.worker_config.items()}
        return WorkerConfig(**values)

    def pool_for(self, scale: float) -> PoolConfig:
        values = {
            k: (v * scale if k in _POOL_TIME_FIELDS else v) for k, v in self.pool_config.items()
        }
        return PoolConfig(**values)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _without_sequential(data: dict[str, Any], sequential: dict[str, Any]) -> dict[str, Any]:
    merged = _deep_merge(data, sequential)
    merged.pop("sequential", None)
    return merged


def load_scenario(path: Path) -> Scenario:
    """Load and validate one scenario file; DataError names the file, key and expectation."""
    return _parse(load_toml(path), path)


def _parse(data: dict[str, Any], path: Path) -> Scenario:
    top = Table(data, file=path)
    scenario_id = top.str("id")
    if scenario_id != path.stem:
        raise top.error(
            "id", f"is {scenario_id!r} but the file is named {path.name!r}; make them match"
        )
    title = top.str("title")
    clauses = top.strings("clauses")
    if not clauses:
        raise top.error("clauses", "must name at least one contract clause (see docs/contract.md)")
    for clause in clauses:
        if not re.fullmatch(r"C\d+(\.\d+)?", clause):
            raise top.error(
                "clauses", f"{clause!r} is not a clause of docs/contract.md (C1 ... C12)"
            )
    requires = top.strings("requires", allowed=set(CAPABILITIES))
    description = top.str("description", required=False, default="")
    family = top.str("family")
    if family not in FAMILIES:
        raise top.error("family", f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    without_mutant = top.str("without_mutant", required=False, default="")

    expect = top.table("expect")
    status = expect.str("status", required=False, default="completed")
    groups = []
    for index, group in enumerate(top.tables("workload", required=True)):
        handler = group.str("handler")
        if handler not in app_registry:
            raise group.error(
                "handler", f"unknown handler {handler!r}; the kit has {app_registry.names}"
            )
        params = _params(group.table("params"), handler)
        groups.append(
            TaskGroup(
                count=group.int("count", minimum=1),
                handler=handler,
                params=dict(params),
                prefix=group.str("prefix", required=False, default=f"g{index}"),
                expect_status=_status(group, "expect_status", status),
                at_start=group.bool("at_start", default=True),
            )
        )
        group.done()
    if not groups:
        raise top.error("workload", "needs at least one [[workload]] group")
    if len({g.prefix for g in groups}) != len(groups):
        raise top.error("workload", "two groups share a prefix; give each a distinct 'prefix'")

    workers = top.table("workers", required=True)
    count = workers.int("count", minimum=1)
    config_table = workers.table("config")
    pool_table = workers.table("pool")
    try:
        WorkerConfig.from_mapping(config_table.data, where=f"{path}: key 'workers.config'")
        _pool_from(pool_table)
    except ConfigError as exc:
        raise DataError(str(exc)) from None
    offsets_table = workers.table("clock_offset")
    offsets = {}
    for name in offsets_table.data:
        offset = offsets_table.str(name)
        if not _OFFSET.fullmatch(offset):
            raise offsets_table.error(
                name, f"expected an offset like '-5m' or '+90s', got {offset!r}"
            )
        offsets[name] = offset
    workers.done()
    names = {f"w{i}" for i in range(count)}

    faults: list[Fault] = []
    for fault in top.tables("faults"):
        fault_id = fault.str("id")
        if any(f.id == fault_id for f in faults):
            raise fault.error("id", f"fault id {fault_id!r} is used twice")
        action = fault.str("action")
        if action not in ACTIONS:
            raise fault.error(
                "action", f"unknown action {action!r}; expected one of {sorted(ACTIONS)}"
            )
        target = fault.str("target")
        if action == "start":
            names.add(target)
        elif action in NETWORK_ACTIONS and target.endswith(LISTENER):
            if target.removesuffix(LISTENER) not in names:
                raise fault.error("target", f"no worker named {target.removesuffix(LISTENER)!r}")
        elif target not in names:
            raise fault.error("target", f"no worker named {target!r}; known: {sorted(names)}")
        params = dict(fault.table("params").data)
        if params and action not in NETWORK_ACTIONS | _GROUP_ACTIONS:
            raise fault.error("params", f"only network actions take params, not {action!r}")
        if action == "schedule":
            later = {g.prefix for g in groups if not g.at_start}
            if params.get("group") not in later:
                raise fault.error(
                    "params", f"schedule needs group = one of {sorted(later)} (at_start = false)"
                )
        if action in ("event", "cancel"):
            prefixes = {g.prefix for g in groups}
            if params.get("group") not in prefixes:
                raise fault.error("params", f"{action} needs group = one of {sorted(prefixes)}")
            if action == "event" and not isinstance(params.get("name"), str):
                raise fault.error("params", "event needs name = the event's name")
        trigger = _trigger(fault.table("when"), faults, names)
        faults.append(Fault(fault_id, action, target, trigger, params))
        fault.done()
    network = _network(top.table("network"), names, requires)
    scheduled = {f.params.get("group") for f in faults if f.action == "schedule"}
    for group in groups:
        if not group.at_start and group.prefix not in scheduled:
            raise top.error(
                "workload", f"group {group.prefix!r} has at_start = false but no fault schedules it"
            )
    for fault in faults:
        if fault.action in NETWORK_ACTIONS and fault.target not in network.proxied:
            raise top.error(
                "faults",
                f"fault {fault.id!r} acts on {fault.target}'s network, but network.proxied "
                f"is {network.proxied}",
            )

    for name in offsets:
        if name not in names:
            raise offsets_table.error(name, f"no worker named {name!r}; known: {sorted(names)}")
    expect_min = expect.counts("min", allowed=set(COUNTERS))
    expect_max = expect.counts("max", allowed=set(COUNTERS))
    _status(expect, "status", status)
    expect.done()
    if faults and not expect_min:
        raise top.error(
            "expect.min",
            "a scenario with faults must require evidence that they hit something "
            f"(counters: {sorted(COUNTERS)})",
        )
    timeout = top.number("timeout", required=False, default=60.0, minimum=1)
    settle = top.number("settle", required=False, default=0.5)
    sequential = top.table("sequential").data
    top.done()
    if sequential:
        try:
            _parse(_without_sequential(data, sequential), path)
        except DataError as exc:
            raise DataError(f"{exc} (with the [sequential] overrides applied)") from None
    return Scenario(
        id=scenario_id,
        title=title,
        family=family,
        without_mutant=without_mutant,
        path=path,
        clauses=clauses,
        requires=requires,
        description=description,
        workload=groups,
        workers=count,
        worker_config=dict(config_table.data),
        pool_config=dict(pool_table.data),
        clock_offsets=offsets,
        faults=faults,
        network=network,
        expect_min=expect_min,
        expect_max=expect_max,
        expect_status=status,
        timeout=timeout,
        settle=settle,
        sequential=dict(sequential),
        raw=data,
    )


_OFFSET = re.compile(r"[+-]\d+(\.\d+)?[smhd]")
_STATUSES = ("completed", "failed", "cancelled")


def _params(table: Table, handler: str) -> dict[str, Any]:
    """Check a group's params against what its handler reads (echo takes anything)."""
    schema = PARAMS.get(handler)
    if schema is None:
        return dict(table.data)
    for key, value in table.data.items():
        if key not in schema:
            known = ", ".join(f"{k} ({what})" for k, (_, what) in schema.items())
            raise table.error(key, f"handler {handler!r} has no param {key!r}; it takes: {known}")
        kind, what = schema[key]
        bad_number = isinstance(value, float) and not math.isfinite(value)
        if isinstance(value, bool) or not isinstance(value, kind) or bad_number:
            raise table.error(key, f"expected {what} ({_type_name(kind)}), got {value!r}")
    return dict(table.data)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _status(table: Table, key: str, default: str) -> str:
    value: str = table.str(key, required=False, default=default)
    if value not in _STATUSES:
        raise table.error(key, f"expected one of {list(_STATUSES)}, got {value!r}")
    return value


def _pool_from(table: Table) -> PoolConfig:
    known = {f.name for f in fields(PoolConfig)}
    unknown = sorted(set(table.data) - known)
    if unknown:
        raise table.error(unknown[0], f"unknown pool setting; expected some of {sorted(known)}")
    return PoolConfig(**table.data)


def _network(table: Table, workers: set[str], requires: list[str]) -> NetworkPlan:
    # "w0" proxies w0's pool connections; "w0.listen" its LISTEN connection.
    proxied = table.strings("proxied", allowed=workers | {w + LISTENER for w in workers})
    start_down = table.strings("start_down", allowed=set(proxied))
    plan = NetworkPlan(proxied, start_down, table.bool("health"))
    table.done()
    if proxied and "network_faults" not in requires:
        raise table.error("proxied", 'proxied workers need requires = ["network_faults"]')
    return plan


def _trigger(when: Table, earlier: list[Fault], workers: set[str]) -> Trigger:
    after = when.str("after", required=False)
    if after is not None and after not in {f.id for f in earlier}:
        raise when.error("after", f"no earlier fault named {after!r}")
    event = when.str("event", required=False)
    if event is not None and event not in TRIGGER_EVENTS:
        raise when.error(
            "event", f"unknown event {event!r}; expected one of {sorted(TRIGGER_EVENTS)}"
        )
    worker = when.str("worker", required=False)
    if worker is not None and worker not in workers:
        raise when.error("worker", f"no worker named {worker!r}; known: {sorted(workers)}")
    trigger = Trigger(
        delay=when.number("delay", required=False, default=0.0),
        after=after,
        event=event,
        worker=worker,
        count=when.int("count", required=False, default=1, minimum=1),
    )
    when.done()
    return trigger


def load_all(directory: Path) -> list[Scenario]:
    return [load_scenario(path) for path in sorted(directory.glob("*.toml"))]
