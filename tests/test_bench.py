"""The bench: its arithmetic, its wire counters, and one small real run on SQLite.

No assertion here is about speed: numbers depend on the machine, so tests only check that
every section is measured and reported.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from zart_conformance.bench.stats import latency_summary, median_run, percentile, ratio_rows
from zart_conformance.bench.wire import MySQLCounter, PostgresCounter
from zart_conformance.cli import main


def test_percentiles_interpolate_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary_is_in_milliseconds() -> None:
    summary = latency_summary([0.001, 0.002, 0.003])
    assert summary == {"samples": 3, "p50_ms": 2.0, "p95_ms": 2.9, "max_ms": 3.0, "mean_ms": 2.0}


def test_the_median_run_is_kept_with_every_run_beside_it() -> None:
    runs = [{"per_second": 9.0, "seconds": 1}, {"per_second": 3.0, "seconds": 3}]
    runs.append({"per_second": 5.0, "seconds": 2})
    assert median_run(runs) == {
        "per_second": 5.0,
        "seconds": 2,
        "runs": [9.0, 3.0, 5.0],
        "statistic": "median of 3 runs",
    }
    # An even count keeps the lower middle run: a ratio is not flattered by the faster one.
    assert median_run(runs[:2])["per_second"] == 3.0
    assert (
        median_run(runs[:2], interleaved=True)["statistic"] == "lower median of 2 interleaved runs"
    )
    assert median_run(runs[:1])["runs"] == [9.0]
    assert median_run(runs[:1])["statistic"] == "one run"
    with pytest.raises(ValueError):
        median_run([])


def test_ratios_compare_with_the_baseline_of_the_same_run() -> None:
    section = {
        "worker": {"1": {"per_second": 3000.0}, "2": {"skipped": "no"}},
        "ceiling": {"1": {"per_second": 8000.0}},
        "peer": {"worker": {"1": {"per_second": 2000.0}}, "pickup": {"p50_ms": 2.0, "p95_ms": 4.0}},
        "pickup": {"listen": {"p50_ms": 3.0, "p95_ms": 4.0}},
        "idle": {"statements": 7, "poll_intervals": 6.0},
    }
    rows = {row["what"]: row for row in ratio_rows("postgres", section)}
    assert rows["worker / ceiling, 1 process"]["ratio"] == 0.375
    assert rows["worker / ceiling, 1 process"]["met"] is False
    assert rows["worker / pgqueuer, 1 process"]["met"] is True
    # Latency: lower is better, so a ratio above the target misses it.
    assert rows["pickup p50 (NOTIFY) / pgqueuer"]["met"] is False
    assert rows["pickup p95 (NOTIFY) / pgqueuer"]["met"] is True
    # One statement more than the idle polls in the window misses "one per poll interval".
    assert rows["idle statements / poll intervals"]["met"] is False
    # Each row says which way is better, and "met" follows it.
    for row in rows.values():
        higher = row["better"] == "higher is better"
        assert row["better"] in ("higher is better", "lower is better")
        assert row["met"] == (
            row["ratio"] >= row["target"] if higher else row["ratio"] <= row["target"]
        )
    assert rows["worker / ceiling, 1 process"]["better"] == "higher is better"
    assert rows["pickup p50 (NOTIFY) / pgqueuer"]["better"] == "lower is better"
    assert rows["idle statements / poll intervals"]["better"] == "lower is better"
    # Units on both sides: the idle row's baseline counts poll intervals, not statements.
    assert rows["worker / ceiling, 1 process"]["unit"] == "tasks/s"
    assert rows["pickup p95 (NOTIFY) / pgqueuer"]["baseline_unit"] == "ms"
    idle = rows["idle statements / poll intervals"]
    assert (idle["unit"], idle["baseline_unit"]) == ("statements", "poll intervals")
    # What was not measured on both sides is not compared.
    assert "worker / ceiling, 2 processes" not in rows
    assert "bulk schedule / pgqueuer" not in rows


def _pg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", 4 + len(body)) + body


def test_postgres_counter_counts_executes_and_queries_across_reads() -> None:
    ssl_request = struct.pack("!II", 8, 80877103)
    startup = struct.pack("!II", 17, 196608) + b"user\0pg\0\0"
    stream = ssl_request + startup + _pg(b"Q", b"BEGIN\0") + _pg(b"P", b"x" * 10)
    stream += _pg(b"B") + _pg(b"E", b"\0\0\0\0\0") + _pg(b"S") + _pg(b"E", b"\0\0\0\0\0")
    counter = PostgresCounter()
    for i in range(0, len(stream), 3):  # split at awkward places, as TCP may
        counter.feed(stream[i : i + 3])
    assert counter.statements == 3


def test_mysql_counter_counts_commands_not_handshake_packets() -> None:
    def packet(sequence: int, payload: bytes) -> bytes:
        return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload

    stream = packet(1, b"\x03login-response-looks-like-a-query")
    stream += packet(0, b"\x03SELECT 1") + packet(0, b"\x0e") + packet(0, b"\x17\x01\0\0\0")
    counter = MySQLCounter()
    counter.feed(stream[:5])
    counter.feed(stream[5:])
    assert counter.statements == 2


SECTIONS = {
    "server",
    "load_average",
    "worker",
    "ceiling",
    "scheduling",
    "pickup",
    "idle",
    "peer",
    "suite",
}


def test_a_small_bench_run_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "made" / "on" / "demand" / "bench.json"  # directories the command makes
    plot = tmp_path / "bench.png" if importlib.util.find_spec("matplotlib") else Path("-")
    args = ["bench", "--backend", "sqlite", "--tasks", "200", "--idle-seconds", "5"]
    args += ["--pickup-samples", "6", "--repeat", "2", "--json", str(out), "--plot", str(plot)]
    result = CliRunner().invoke(main, args, env={"ZART_RUN_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {"generated_at", "machine", "settings", "backends", "ratios"} <= set(doc)
    assert doc["backends_requested"] == doc["backends_complete"] == ["sqlite"]
    section = doc["backends"]["sqlite"]
    assert set(section) == SECTIONS
    assert section["worker"]["1"]["tasks"] == 200 and section["ceiling"]["1"]["per_second"] > 0
    # Two runs each: the median one is reported, both rates are kept, and it says so.
    for measured, statistic in (
        (section["worker"]["1"], "lower median of 2 interleaved runs"),
        (section["ceiling"]["1"], "lower median of 2 interleaved runs"),
        (section["scheduling"]["bulk"], "lower median of 2 runs"),
    ):
        assert len(measured["runs"]) == 2 and measured["per_second"] == min(measured["runs"])
        assert measured["statistic"] == statistic
    assert "skipped" in section["worker"]["2"]  # SQLite declares no concurrent workers
    assert section["scheduling"]["single"]["samples"] == 200
    assert section["pickup"]["poll"]["samples"] == 3
    assert section["idle"]["seconds"] == 5
    # Two poll intervals, one for each test that polls: which is which is in its name.
    settings = doc["settings"]
    assert "poll_interval" not in settings
    assert section["pickup"]["poll"]["poll_interval"] == settings["pickup_poll_interval"] == 0.1
    assert section["idle"]["poll_interval"] == settings["idle_poll_interval"] == 5.0
    assert "skipped" in section["peer"] and "skipped" in section["suite"]
    assert [row["what"] for row in doc["ratios"]] == [
        "worker / ceiling, 1 process",
        "idle statements / poll intervals",
    ]
    if plot != Path("-"):
        assert plot.stat().st_size > 0
    # Every SQLite database (and its -wal and -shm) went with its section, as schemas do.
    assert not [p for p in (tmp_path / "bench").rglob("*") if ".db" in p.name], "left behind"
