"""A run that is killed leaves no worker processes behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import SCALE


def child_pids(run_root: Path) -> list[int]:
    pids = []
    for log in run_root.glob("*/events/runner.jsonl"):
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["kind"] == "worker_spawned":
                pids.append(event["child"])
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_killing_the_runner_kills_its_workers(tmp_path: Path) -> None:
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from zart_conformance.cli import main; main()",
            "run",
            "--backend",
            "sqlite",
            "--scenario",
            "long-task-heartbeat",
        ],
        cwd=tmp_path,
        env={**os.environ, "ZART_RUN_DIR": str(tmp_path / "runs")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60 * SCALE
        while not child_pids(tmp_path / "runs"):
            assert time.monotonic() < deadline, "the runner never started a worker"
            assert runner.poll() is None, "the runner ended before starting a worker"
            time.sleep(0.1)
        pids = child_pids(tmp_path / "runs")
        assert any(alive(pid) for pid in pids)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    deadline = time.monotonic() + 10 * SCALE
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived their runner"
        time.sleep(0.1)
