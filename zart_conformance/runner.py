"""Run one scenario against one backend: real worker processes, real signals, then judge.

The runner owns the clock of the fault schedule and nothing else: workers, handlers and the
checker only meet through the event log and the final stored state.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from zart_ref import Backend, NewTask, PoolConfig, WorkerConfig
from zart_ref.importing import load_object
from zart_ref.schema import TERMINAL
from zart_ref.urls import normalize_url

from .backends import Descriptor
from .checker import check
from .eventlog import EventLog, History, Tail
from .provision import Server, isolate
from .scenario import CAPABILITIES, Fault, Scenario

TICK = 0.02
_SIGNALS = {
    "kill": signal.SIGKILL,
    "stop": signal.SIGSTOP,
    "cont": signal.SIGCONT,
    "term": signal.SIGTERM,
}


def time_scale() -> float:
    """The one multiplier for every duration in scenarios (slow machines set it above 1)."""
    return float(os.environ.get("ZART_TIME_SCALE", "1"))


def sub_seed(seed: int, scenario_id: str) -> int:
    """A scenario's own seed, so selecting other scenarios does not change its schedule."""
    return zlib.crc32(f"{seed}:{scenario_id}".encode())


@dataclass
class RunOptions:
    seed: int
    scale: float = field(default_factory=time_scale)
    runs_root: Path = field(
        default_factory=lambda: Path(os.environ.get("ZART_RUN_DIR", ".zart-runs"))
    )
    keep: bool = False
    progress: Callable[[str], None] | None = None


@dataclass
class ScenarioResult:
    scenario: str
    backend: str
    outcome: str  # passed | failed | not_applicable
    seed: int
    reason: str = ""
    violations: list[str] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)
    evidence: dict[str, int] = field(default_factory=dict)
    # The counters the scenario puts bounds on: what its evidence is.
    checked: list[str] = field(default_factory=list)
    duration: float = 0.0
    run_dir: str = ""
    replay: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome in ("passed", "not_applicable")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def replay_command(descriptor: Descriptor, scenario_id: str, seed: int) -> str:
    shipped = descriptor.path.parent.name == "backends" and descriptor.path.stem == descriptor.name
    backend = descriptor.name if shipped else str(descriptor.path)
    command = f"zart-conformance run --backend {backend} --scenario {scenario_id} --seed {seed}"
    if descriptor.factory != "zart_ref.sql:SQLBackend":
        command += f" --factory {descriptor.factory}"
    return command


@dataclass
class _Proc:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    expected_exit: bool = False
    stopped: bool = False
    terminated: bool = False
    reported: bool = False


def db_port(url: str) -> int | None:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return None
    return parsed.port or {"postgresql": 5432, "mysql": 3306}[parsed.get_backend_name()]


def count_connections(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections of process ``pid`` to remote ``port``, read from /proc."""
    inodes = set()
    try:
        descriptors = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in descriptors:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            remote_port = int(cols[2].rsplit(":", 1)[1], 16)
            if cols[3] == "01" and remote_port == port and cols[9] in inodes:
                count += 1
    return count


def find_libfaketime() -> str | None:
    candidates = [os.environ.get("ZART_LIBFAKETIME", "")]
    candidates += [str(p) for p in Path("/usr/lib").glob("*/faketime/libfaketime.so.1")]
    candidates += ["/usr/lib/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1"]
    return next((c for c in candidates if c and Path(c).exists()), None)


class RunError(Exception):
    """The run could not be carried out (as opposed to a backend failing the checks)."""


class _Run:
    def __init__(
        self, scenario: Scenario, descriptor: Descriptor, server: Server, options: RunOptions
    ) -> None:
        self.scenario = scenario
        self.descriptor = descriptor
        self.options = options
        self.seed = sub_seed(options.seed, scenario.id)
        self.rng = random.Random(self.seed)
        self.run_id = f"{scenario.id}-{descriptor.name}-{uuid.uuid4().hex[:6]}"
        self.run_dir = (options.runs_root / self.run_id).resolve()
        self.events_dir = self.run_dir / "events"
        self.events_dir.mkdir(parents=True, exist_ok=True)
        self.target = isolate(descriptor, server, self.run_id, self.run_dir)
        self.log = EventLog(self.events_dir / "runner.jsonl", source="runner")
        self.procs: dict[str, _Proc] = {}
        self.tails: dict[Path, Tail] = {}
        self.counts: Counter[tuple[str | None, str]] = Counter()
        self.fired: dict[str, float] = {}
        self.condition_met: dict[str, float] = {}
        self.config: WorkerConfig = scenario.config_for(options.scale)
        self.pool: PoolConfig = scenario.pool_for(options.scale)
        self.notes: list[str] = []
        self.expected: dict[str, str] = {}
        self.db_port = (
            db_port(self.target.url) if "client_server" in descriptor.capabilities else None
        )
        self.connections: dict[str, int] = {}

    def say(self, text: str) -> None:
        if self.options.progress:
            self.options.progress(text)

    # -- workers --------------------------------------------------------------------------

    def _worker_args(self, name: str) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "zart_ref.cli",
            "worker",
            "--app",
            "zart_conformance.app:registry",
            "--database-url",
            self.target.url,
            "--backend",
            self.descriptor.factory,
            "--worker-id",
            name,
            "--no-migrate",
        ]
        if self.target.schema:
            args += ["--schema", self.target.schema]
        for prefix, config in (("", self.config), ("pool-", self.pool)):
            for f in fields(config):
                value = getattr(config, f.name)
                if value is not None:
                    args += ["--" + prefix + f.name.replace("_", "-"), str(value)]
        return args

    async def start_worker(self, name: str) -> None:
        if name in self.procs and self.procs[name].process.returncode is None:
            raise RunError(f"worker {name} is already running")
        log_path = self.run_dir / f"{name}.log"
        env = {
            **os.environ,
            "ZART_EVENT_DIR": str(self.events_dir),
            "ZART_WORKER_NAME": name,
            "ZART_TIME_SCALE": str(self.options.scale),
            "PYTHONUNBUFFERED": "1",
            **self._clock_env(name),
        }
        with log_path.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *self._worker_args(name),
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        self.procs[name] = _Proc(name, process, log_path)
        self.log.write("worker_spawned", target=name, child=process.pid)

    def _clock_env(self, name: str) -> dict[str, str]:
        """libfaketime for a worker whose wall clock the scenario sets off."""
        offset = self.scenario.clock_offsets.get(name)
        if offset is None:
            return {}
        library = find_libfaketime()
        if library is None:
            raise RunError(
                f"worker {name} needs a clock offset of {offset}, which takes libfaketime: "
                "install it (Debian: apt-get install faketime) or set ZART_LIBFAKETIME to "
                "the path of libfaketime.so.1"
            )
        preload = " ".join(p for p in (os.environ.get("LD_PRELOAD", ""), library) if p)
        # DONT_FAKE_MONOTONIC: the event log orders everything by the shared monotonic clock.
        return {"LD_PRELOAD": preload, "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}

    def sample_connections(self) -> None:
        """Count each live worker's TCP connections to the database (from /proc)."""
        if self.db_port is None:
            return
        for proc in self.procs.values():
            if proc.process.returncode is not None or proc.stopped:
                continue
            count = count_connections(proc.process.pid, self.db_port)
            if count != self.connections.get(proc.name):
                self.connections[proc.name] = count
                self.log.write("connections", target=proc.name, count=count)

    def _log_tail(self, proc: _Proc, lines: int = 8) -> str:
        try:
            text = proc.log_path.read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])

    # -- events and triggers --------------------------------------------------------------

    def poll_events(self) -> None:
        for path in self.events_dir.glob("*.jsonl"):
            tail = self.tails.setdefault(path, Tail(path))
            for event in tail.read():
                self.counts[(event["src"], event["kind"])] += 1
                self.counts[(None, event["kind"])] += 1

    def _due(self, fault: Fault, now: float, started: float) -> bool:
        when = fault.when
        if when.after is not None and when.after not in self.fired:
            return False
        base = self.fired[when.after] if when.after else started
        if when.event is not None:
            if self.counts[(when.worker, when.event)] < when.count:
                return False
            base = max(base, self.condition_met.setdefault(fault.id, now))
        return now >= base + when.delay * self.options.scale

    async def fire(self, fault: Fault) -> None:
        if fault.action == "start":
            await self.start_worker(fault.target)
        else:
            proc = self.procs[fault.target]
            if proc.process.returncode is not None:
                self.notes.append(f"fault {fault.id}: {fault.target} had already exited")
            else:
                if fault.action in ("kill", "term"):
                    proc.expected_exit = True
                proc.terminated = fault.action == "term"
                proc.stopped = fault.action == "stop"
                os.kill(proc.process.pid, _SIGNALS[fault.action])
        self.fired[fault.id] = time.monotonic()
        self.log.write("fault", fault=fault.id, action=fault.action, target=fault.target)
        self.say(f"fault {fault.id}: {fault.action} {fault.target}")

    # -- the run --------------------------------------------------------------------------

    def workload(self) -> list[NewTask]:
        tasks = [
            NewTask(id=f"{group.prefix}-{i:05d}", name=group.handler, payload=group.params)
            for group in self.scenario.workload
            for i in range(group.count)
        ]
        self.expected = {
            f"{group.prefix}-{i:05d}": group.expect_status
            for group in self.scenario.workload
            for i in range(group.count)
        }
        self.rng.shuffle(tasks)
        return tasks

    async def execute(self, backend: Backend) -> dict[str, str | None]:
        scenario = self.scenario
        for name in scenario.worker_names:
            await self.start_worker(name)
        deadline = time.monotonic() + scenario.timeout * self.options.scale
        while self.counts[(None, "worker_started")] < len(scenario.worker_names):
            self.poll_events()
            for proc in self.procs.values():
                if proc.process.returncode is not None:
                    raise RunError(
                        f"worker {proc.name} exited with code {proc.process.returncode} "
                        f"before starting:\n{self._log_tail(proc)}"
                    )
            if time.monotonic() > deadline:
                raise RunError("workers did not log worker_started before the scenario timeout")
            await asyncio.sleep(TICK)
        tasks = self.workload()
        await backend.schedule(tasks)
        self.log.write("scheduled", count=len(tasks))
        started = time.monotonic()
        self.say(f"scheduled {len(tasks)} tasks on {len(scenario.worker_names)} worker(s)")
        pending = list(scenario.faults)
        last_check = 0.0
        done = False
        while True:
            now = time.monotonic()
            self.poll_events()
            for fault in [f for f in pending if self._due(f, now, started)]:
                pending.remove(fault)
                await self.fire(fault)
            self._check_exits()
            self.sample_connections()
            if now - last_check >= 0.2:
                last_check = now
                counts = await backend.count_by_status()
                finished = sum(n for status, n in counts.items() if status in TERMINAL)
                done = finished >= len(tasks)
            settled = (
                not self.fired
                or now >= max(self.fired.values()) + scenario.settle * self.options.scale
            )
            if done and not pending and settled:
                break
            if now > deadline:
                waiting = ", ".join(f"{f.id} ({f.when.describe()})" for f in pending)
                self.notes.append(
                    f"timed out after {scenario.timeout * self.options.scale:g}s"
                    + (f"; faults never fired: {waiting}" if waiting else "")
                )
                break
            await asyncio.sleep(TICK)
        await self.stop_workers()
        final: dict[str, str | None] = {}
        for task in tasks:
            record = await backend.get(task.id)
            final[task.id] = record.status if record else None
        return final

    def _check_exits(self) -> None:
        for proc in self.procs.values():
            code = proc.process.returncode
            if (
                code is not None
                and not proc.expected_exit
                and not getattr(proc, "_reported", False)
            ):
                proc._reported = True  # type: ignore[attr-defined]
                self.log.write("worker_exit", target=proc.name, code=code)
                self.notes.append(
                    f"worker {proc.name} exited on its own with code {code}:\n{self._log_tail(proc)}"
                )

    async def stop_workers(self) -> None:
        grace = self.config.shutdown_timeout + 10 * self.options.scale
        alive = [p for p in self.procs.values() if p.process.returncode is None]
        for proc in alive:
            proc.expected_exit = True
            if proc.stopped:
                os.kill(proc.process.pid, signal.SIGCONT)
            proc.process.send_signal(signal.SIGTERM)
        for proc in alive:
            try:
                code = await asyncio.wait_for(proc.process.wait(), grace)
            except TimeoutError:
                proc.process.kill()
                code = await proc.process.wait()
                self.notes.append(
                    f"worker {proc.name} ignored SIGTERM for {grace:g}s and was killed"
                )
            self.log.write("worker_exit", target=proc.name, code=code)
            if code != 0:
                self.notes.append(
                    f"worker {proc.name} exited with code {code} after SIGTERM (expected 0):\n"
                    + self._log_tail(proc)
                )

    async def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.process.returncode is None:
                proc.process.kill()
                await proc.process.wait()


async def run_scenario(
    scenario: Scenario, descriptor: Descriptor, server: Server, options: RunOptions
) -> ScenarioResult:
    """Run ``scenario`` on ``descriptor``'s backend and judge it."""
    replay = replay_command(descriptor, scenario.id, options.seed)
    missing = [cap for cap in scenario.requires if cap not in descriptor.capabilities]
    if missing:
        return ScenarioResult(
            scenario.id,
            descriptor.name,
            "not_applicable",
            options.seed,
            reason="; ".join(
                f"needs {cap} ({CAPABILITIES[cap]}), which backend {descriptor.name!r} does not declare"
                for cap in missing
            ),
            replay=replay,
        )
    scenario = scenario.for_capabilities(set(descriptor.capabilities))
    run = _Run(scenario, descriptor, server, options)
    began = time.monotonic()
    factory = load_object(descriptor.factory, what=f"{descriptor.path}: backend")
    backend: Backend = factory(
        run.target.url, pool=PoolConfig(max_connections=4), schema=run.target.schema
    )
    final: dict[str, str | None] = {}
    try:
        await backend.migrate()
        run.log.write(
            "run_started", scenario=scenario.id, backend=descriptor.name, seed=options.seed
        )
        final = await run.execute(backend)
    finally:
        await run.kill_all()
        await backend.close()
    history = History.load(run.events_dir)
    verdict = check(
        history,
        expected=run.expected,
        final=final,
        faults=[f.id for f in scenario.faults],
        expect_min=scenario.expect_min,
        expect_max=scenario.expect_max,
    )
    violations = verdict.violations + run.notes
    result = ScenarioResult(
        scenario=scenario.id,
        backend=descriptor.name,
        outcome="passed" if verdict.ok and not run.notes else "failed",
        seed=options.seed,
        violations=violations,
        unmet=verdict.unmet,
        evidence=verdict.evidence,
        checked=list(dict.fromkeys([*scenario.expect_min, *scenario.expect_max])),
        duration=time.monotonic() - began,
        run_dir=str(run.run_dir),
        replay=replay,
    )
    (run.run_dir / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    if result.passed and not options.keep:
        await run.target.drop()
    return result
