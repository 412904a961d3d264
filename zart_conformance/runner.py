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

import aiohttp

from zart_ref import Backend, NewTask, PoolConfig, WorkerConfig
from zart_ref.errors import ConfigError
from zart_ref.importing import load_object
from zart_ref.schema import TERMINAL
from zart_ref.urls import normalize_url
from zart_ref.workflow import DurableBackend

from .backends import Descriptor, resolve_descriptor
from .checker import check
from .children import die_with_parent
from .data import scenarios_dir
from .eventlog import EventLog, History, Tail
from .network import Network, provision_network
from .provision import Server, isolate
from .scenario import CAPABILITIES, LISTENER, NETWORK_ACTIONS, Fault, Scenario

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


PASSING = ("passed", "not_applicable", "expected_failure")


@dataclass
class ScenarioResult:
    scenario: str
    backend: str
    outcome: str  # passed | failed | not_applicable | expected_failure | unexpected_pass
    seed: int
    reason: str = ""
    violations: list[str] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)
    evidence: dict[str, int] = field(default_factory=dict)
    # The counters the scenario puts bounds on: what its evidence is.
    checked: list[str] = field(default_factory=list)
    network: str = ""
    duration: float = 0.0
    run_dir: str = ""
    replay: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome in PASSING

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def replay_command(descriptor: Descriptor, scenario: Scenario, seed: int) -> str:
    own_file = scenario.path.resolve().parent != scenarios_dir().resolve()
    which = str(scenario.path) if own_file else scenario.id
    backend = descriptor.ref or str(descriptor.path)
    command = f"zart-conformance run --backend {backend} --scenario {which} --seed {seed}"
    try:
        named = resolve_descriptor(backend).factory
    except ConfigError:
        named = None
    if descriptor.factory != named:
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


DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
HEALTH_EVERY = 0.1


def db_port(url: str) -> int | None:
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return None
    return parsed.port or DEFAULT_PORTS[parsed.get_backend_name()]


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
        self.network: Network | None = None
        self.worker_urls: dict[str, str] = {}
        self.listen_urls: dict[str, str] = {}
        self.groups: dict[str, list[NewTask]] = {}
        self.backend: Backend | None = None
        self.health_ports: dict[str, int] = {}
        self.readiness: dict[str, bool] = {}
        self.last_health_sample = 0.0

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
            self.worker_urls.get(name, self.target.url),
            "--backend",
            self.descriptor.factory,
            "--worker-id",
            name,
            "--no-migrate",
        ]
        if self.target.schema:
            args += ["--schema", self.target.schema]
        if self.scenario.network.health:
            args += ["--health-port", "0"]
        if name in self.listen_urls:
            args += ["--listen-database-url", self.listen_urls[name]]
        for prefix, config in (("", self.config), ("pool-", self.pool)):
            for f in fields(config):
                value = getattr(config, f.name)
                flag = prefix + f.name.replace("_", "-")
                if isinstance(value, bool):
                    args.append(f"--{flag}" if value else f"--no-{flag}")
                elif value is not None:
                    args += [f"--{flag}", str(value)]
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
                preexec_fn=die_with_parent,
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

    async def signal(self, fault: Fault) -> None:
        """Deliver an event to, or cancel, every execution of a workload group."""
        backend = self.backend
        if not isinstance(backend, DurableBackend):
            raise RunError(f"fault {fault.id}: the backend cannot store events or cancel")
        for task in self.groups[fault.params["group"]]:
            if fault.action == "event":
                await backend.deliver_event(task.id, fault.params["name"], fault.params.get("data"))
            else:
                await backend.request_cancel(task.id)

    async def setup_network(self) -> None:
        """Give each proxied worker a proxy of its own in front of the database."""
        plan = self.scenario.network
        if not plan.proxied:
            return
        self.network = await asyncio.to_thread(provision_network)
        self.log.write("network", how=self.network.how)
        self.say(f"network faults through {self.network.how}")
        url = normalize_url(self.target.url)
        upstream = f"{url.host}:{url.port or DEFAULT_PORTS[url.get_backend_name()]}"
        for name in plan.proxied:
            listen = await self.network.proxy_for(
                name, upstream, enabled=name not in plan.start_down
            )
            if name in plan.start_down:
                # The proxy starts disabled: a fault window from the first moment.
                self.log.write("fault", fault=f"start-down-{name}", action="down", target=name)
            host, port = listen.rsplit(":", 1)
            proxied = url.set(host=host, port=int(port)).render_as_string(hide_password=False)
            if name.endswith(LISTENER):
                self.listen_urls[name.removesuffix(LISTENER)] = proxied
            else:
                self.worker_urls[name] = proxied

    async def sample_health(self) -> None:
        """Read each worker's /readyz over HTTP and log every change."""
        now = time.monotonic()
        if not self.health_ports or now - self.last_health_sample < HEALTH_EVERY:
            return
        self.last_health_sample = now
        timeout = aiohttp.ClientTimeout(total=HEALTH_EVERY * 4)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for name, port in self.health_ports.items():
                proc = self.procs.get(name)
                if proc is None or proc.process.returncode is not None or proc.stopped:
                    continue
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        ready = response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    continue  # no answer is not an answer: liveness is another matter
                if self.readiness.get(name) != ready:
                    self.readiness[name] = ready
                    self.log.write("health", target=name, ready=ready)

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
                if event["kind"] == "health_listening":
                    self.health_ports[event["src"]] = event["port"]

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
        elif fault.action == "schedule":
            assert self.backend is not None
            await self.backend.schedule(self.groups[fault.params["group"]])
        elif fault.action in ("event", "cancel"):
            await self.signal(fault)
        elif fault.action in NETWORK_ACTIONS:
            assert self.network is not None
            if fault.action in ("heal", "up"):
                affected = await self.network.affected(fault.target)
                if affected is not None:
                    self.log.write("toxic_affected", target=fault.target, count=affected)
            await self.network.apply(fault.action, fault.target, fault.params)
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
        self.log.write(
            "fault", fault=fault.id, action=fault.action, target=fault.target, params=fault.params
        )
        self.say(f"fault {fault.id}: {fault.action} {fault.target}")

    # -- the run --------------------------------------------------------------------------

    def workload(self) -> list[NewTask]:
        """The tasks scheduled at the start; groups with at_start = false wait for a fault."""
        for group in self.scenario.workload:
            tasks = [
                NewTask(id=f"{group.prefix}-{i:05d}", name=group.handler, payload=group.params)
                for i in range(group.count)
            ]
            self.groups[group.prefix] = tasks
            self.expected.update(dict.fromkeys((t.id for t in tasks), group.expect_status))
        first = [t for g in self.scenario.workload if g.at_start for t in self.groups[g.prefix]]
        self.rng.shuffle(first)
        return first

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
        self.backend = backend
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
            await self.sample_health()
            if now - last_check >= 0.2:
                last_check = now
                counts = await backend.count_by_status()
                finished = sum(n for status, n in counts.items() if status in TERMINAL)
                done = finished >= len(self.expected)
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
        for task_id in self.expected:
            record = await backend.get(task_id)
            final[task_id] = record.status if record else None
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
        if self.network is not None:
            await self.network.close()


async def run_scenario(
    scenario: Scenario, descriptor: Descriptor, server: Server, options: RunOptions
) -> ScenarioResult:
    """Run ``scenario`` on ``descriptor``'s backend and judge it."""
    replay = replay_command(descriptor, scenario, options.seed)
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
        await run.setup_network()
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
        scale=options.scale,
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
        network=run.network.how if run.network else "",
        duration=time.monotonic() - began,
        run_dir=str(run.run_dir),
        replay=replay,
    )
    (run.run_dir / "result.json").write_text(json.dumps(result.to_json(), indent=2))
    if result.passed and not options.keep:
        await run.target.drop()
    return result
