"""How bench processes report to the bench through files: ready marks and handler stamps.

A process touches ``$ZART_BENCH_DIR/ready.<pid>`` once it is up. A handler appends
``<task id> <monotonic time>`` to ``$ZART_BENCH_STAMPS`` when it starts: CLOCK_MONOTONIC is
one clock for every process on the machine, the bench's included.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def mark_ready() -> None:
    directory = os.environ.get("ZART_BENCH_DIR")
    if directory:
        (Path(directory) / f"ready.{os.getpid()}").touch()


def write_stamp(task_id: str) -> None:
    started = time.monotonic()
    with open(os.environ["ZART_BENCH_STAMPS"], "a") as out:
        out.write(f"{task_id} {started!r}\n")


def read_stamps(path: Path) -> dict[str, float]:
    """Handler start times by task id (the first start, should one run twice)."""
    stamps: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            task_id, _, at = line.partition(" ")
            stamps.setdefault(task_id, float(at))
    return stamps
