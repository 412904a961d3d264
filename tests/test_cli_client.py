"""The client commands of ``zart`` as scripts and agents use them: real subprocesses, real DBs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SCALE, worker_args
from zart_conformance.provision import Target

ZART = [sys.executable, "-m", "zart_ref.cli"]
ROOT = Path(__file__).resolve().parent.parent


def zart(target: Target, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": target.url, "ZART_SCHEMA": target.schema or ""}
    return subprocess.run(
        [*ZART, *args], capture_output=True, text=True, env=env, timeout=120, check=False, cwd=ROOT
    )


@pytest.fixture
def worker(db: Target, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "DATABASE_URL": db.url, "ZART_SCHEMA": db.schema or ""}
    env["ZART_EVENT_DIR"] = str(tmp_path)
    process = subprocess.Popen(worker_args(db), env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    yield process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def output(result: subprocess.CompletedProcess[str]) -> object:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def test_schedule_wait_status_with_exit_codes(db: Target, worker: subprocess.Popen[bytes]) -> None:
    data = json.dumps({"steps": 2, "unicode": "🦄", "big": 2**60})
    started = zart(db, "schedule", "steps", "--data", data, "--id", "order-1")
    assert output(started) == {"id": "order-1", "created": True}
    again = zart(db, "schedule", "steps", "--data", "{}", "--id", "order-1")
    assert output(again) == {"id": "order-1", "created": False}
    waited = zart(db, "wait", "order-1", "--timeout", str(30 * SCALE))
    assert waited.returncode == 0, waited.stderr
    record = output(waited)
    assert isinstance(record, dict)
    assert record["status"] == "completed" and record["result"]["result"] == [0, 1]
    status = output(zart(db, "status", "order-1"))
    assert isinstance(status, dict) and status["steps_completed"] == 2


def test_events_cancel_and_timeouts(db: Target, worker: subprocess.Popen[bytes]) -> None:
    payload = json.dumps({"steps": 1, "wait_for": "go", "wait_s": 600})
    assert zart(db, "schedule", "steps", "--data", payload, "--id", "e-1").returncode == 0
    assert zart(db, "wait", "e-1", "--timeout", "0.5").returncode == 4
    delivered = zart(db, "event", "e-1", "go", "--data", '{"ok": true}')
    assert output(delivered) == {"id": "e-1", "event": "go", "delivered": True}
    twice = zart(db, "event", "e-1", "go")
    assert twice.returncode == 1 and "already delivered" in twice.stderr
    assert zart(db, "wait", "e-1", "--timeout", str(30 * SCALE)).returncode == 0
    later = zart(db, "schedule", "steps", "--id", "c-1", "--at", "2099-01-01T00:00:00+00:00")
    assert later.returncode == 0
    assert output(zart(db, "cancel", "c-1")) == {"id": "c-1", "status": "cancelled"}
    ended = zart(db, "wait", "c-1", "--timeout", "5")
    assert ended.returncode == 1 and '"cancelled"' in ended.stdout
    listed = output(zart(db, "list", "--status", "cancelled"))
    assert isinstance(listed, list) and [r["id"] for r in listed] == ["c-1"]


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["schedule", "steps", "--data", "{bad"], 2, "--data is not valid JSON"),
        (["schedule", "steps", "--data", "NaN"], 2, "NaN"),
        (["schedule", "steps", "--data", '"a\\u0000b"'], 2, "NUL"),
        (["schedule", "steps", "--at", "2030-01-01T00:00:00"], 2, "naive datetime"),
        (["schedule", "steps", "--at", "tomorrow"], 2, "not an ISO 8601 time"),
        (
            ["schedule", "nope", "--app", "zart_conformance.app:registry"],
            2,
            "unknown workflow 'nope'",
        ),
        (["status", "missing"], 5, "no execution with id 'missing'"),
        (["event", "missing", "go"], 5, "no execution with id 'missing'"),
        (["cancel", "missing"], 5, "no execution with id 'missing'"),
        (["wait", "missing", "--timeout", "1"], 5, "no execution with id 'missing'"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_distinct_exit(
    sqlite_url: str, args: list[str], code: int, fragment: str
) -> None:
    # Input checks do not depend on the backend: one SQLite file keeps this fast.
    db = Target(sqlite_url, None, "sqlite")
    assert zart(db, "migrate").returncode == 0
    result = zart(db, *args)
    assert result.returncode == code, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_database_exits_3_without_the_password() -> None:
    target = Target("postgresql://app:s3cret@127.0.0.1:1/app", None, "postgresql")
    result = zart(target, "status", "x")
    assert result.returncode == 3 and "unavailable" in result.stderr
    assert "s3cret" not in result.stderr
