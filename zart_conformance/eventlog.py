"""The append-only history: one JSON line per event, written with a single write() each.

Every process writes its own file with O_APPEND, so a SIGKILL loses at most the line being
formed and never corrupts another's. The log is independent of the backend under test: it is
what the checker trusts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class EventLog:
    """Appends events to ``path``; each line is on disk (page cache) when ``write`` returns.

    ``t`` is CLOCK_MONOTONIC, shared by every process on the machine and left alone by
    libfaketime (the kit sets DONT_FAKE_MONOTONIC), so histories of workers with skewed wall
    clocks still merge in true order. ``wall`` is the process's own (possibly skewed) clock.
    """

    def __init__(self, path: Path, *, source: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.source = source
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._seq = 0

    def write(self, kind: str, **data: Any) -> None:
        self._seq += 1
        record = {
            "t": time.monotonic(),
            "wall": time.time(),
            "src": self.source,
            "pid": os.getpid(),
            "seq": self._seq,
        }
        record["kind"] = kind
        record.update(data)
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class Tail:
    """Reads whole new lines of a growing file; a half-written last line waits for its end."""

    path: Path
    offset: int = 0
    pending: bytes = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        data = self.pending + chunk
        lines = data.split(b"\n")
        self.pending = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


@dataclass
class History:
    """Every event of a run, merged from all files and ordered by wall time."""

    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, directory: Path) -> History:
        events: list[dict[str, Any]] = []
        for path in sorted(directory.glob("*.jsonl")):
            events.extend(Tail(path).read())
        events.sort(key=lambda e: (e["t"], e["src"], e["seq"]))
        return cls(events)

    def of(self, *kinds: str) -> Iterator[dict[str, Any]]:
        return (e for e in self.events if e["kind"] in kinds)
