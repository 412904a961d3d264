"""Real worker processes for the bench: spawn, wait until each one runs, stop them.

Throughput counts only once every process is polling, so a slow interpreter start is not
measured as a slow queue. Every process the bench starts dies with it (Linux: the parent-death
signal the conformance runner asks for its workers too), so even a killed bench leaves none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from zart_conformance.children import die_with_parent
from zart_conformance.provision import Target

from .cleanup import cleanup

BENCH_APP = "zart_conformance.bench.handlers:registry"
START_TIMEOUT = 60.0
_LOGS: dict[int, Path] = {}


class BenchError(Exception):
    """A measurement could not be carried out (a worker died, a drain never ended)."""


def zart_worker(target: Target, *flags: str) -> list[str]:
    """The command line of a `zart worker` with the bench handlers on ``target``."""
    args = [sys.executable, "-m", "zart_ref.cli", "worker", "--app", BENCH_APP]
    args += ["--database-url", target.url, "--no-migrate", *flags]
    return [*args, "--schema", target.schema] if target.schema else args


@asynccontextmanager
async def processes(
    commands: Sequence[list[str]], run_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Start ``commands``, wait until each has marked itself ready, SIGTERM them at the end."""
    ready_dir = run_dir / f"ready-{time.monotonic_ns()}"
    ready_dir.mkdir(parents=True)
    full_env = {**os.environ, **(env or {}), "ZART_BENCH_DIR": str(ready_dir)}
    started: list[tuple[asyncio.subprocess.Process, Path]] = []
    async with cleanup(lambda: stop([proc for proc, _ in started])):
        for index, command in enumerate(commands):
            log = run_dir / f"{ready_dir.name}-{index}.log"
            with log.open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    stdout=out,
                    stderr=out,
                    stdin=asyncio.subprocess.DEVNULL,
                    env=full_env,
                    preexec_fn=die_with_parent,
                )
            started.append((proc, log))
            _LOGS[proc.pid] = log
        await _wait_ready(started, ready_dir)
        yield [proc for proc, _ in started]


def check_alive(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """Raise with the end of its log if a bench process has exited."""
    for proc in procs:
        if proc.returncode is not None:
            log = _LOGS.get(proc.pid)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:]) if log else ""
            raise BenchError(f"a bench process exited with code {proc.returncode}:\n{tail}")


def _ready_count(directory: Path) -> int:
    return sum(1 for name in os.listdir(directory) if name.startswith("ready."))


async def _wait_ready(started: list[tuple[asyncio.subprocess.Process, Path]], ready: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while _ready_count(ready) < len(started):
        check_alive([proc for proc, _ in started])
        if time.monotonic() > deadline:
            raise BenchError(f"bench workers did not start within {START_TIMEOUT:g}s")
        await asyncio.sleep(0.02)


async def stop(
    procs: list[asyncio.subprocess.Process], how: signal.Signals = signal.SIGTERM
) -> None:
    """Send ``how`` to each process still running and wait for it (SIGKILL after 30 s)."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(how)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
