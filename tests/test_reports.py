"""Reports from recorded histories: timelines, the Markdown matrix, the mutation matrix, the ledger."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from zart_conformance.backends import REFERENCE_FACTORY, load_descriptor, resolve_descriptor
from zart_conformance.data import backends_dir
from zart_conformance.eventlog import History
from zart_conformance.ledger import judge, updated_ledger
from zart_conformance.matrix import merge, problems, render
from zart_conformance.report import write_report
from zart_conformance.runner import ScenarioResult
from zart_conformance.schema import DataError
from zart_conformance.summary import backend_info, summary
from zart_conformance.timeline import build
from zart_conformance.timeline import render as render_timeline


def ev(t: float, src: str, kind: str, **data: Any) -> dict[str, Any]:
    return {"t": t, "src": src, "seq": int(t * 1000), "kind": kind, **data}


HISTORY = History(
    [
        ev(0.0, "runner", "run_started"),
        ev(1.0, "w0", "handler_start", task="a", token="t1"),
        ev(1.1, "w0", "handler_start", task="b", token="t2"),
        ev(1.5, "runner", "fault", fault="pause", action="stop", target="w0"),
        ev(3.0, "runner", "fault", fault="resume", action="cont", target="w0"),
        ev(3.1, "w0", "lease_lost", task="a", token="t1"),
        ev(3.2, "w1", "handler_start", task="a", token="t3"),
        ev(3.5, "w1", "completed", task="a", token="t3"),
        ev(4.0, "runner", "fault", fault="kill-w0", action="kill", target="w0"),
        ev(5.0, "runner", "fault", fault="cut", action="partition", target="w1.listen"),
        ev(6.0, "runner", "run_end"),
    ]
)


def test_timeline_bars_end_where_ownership_ended() -> None:
    timeline = build(HISTORY)
    w0, w1 = timeline.lanes["w0"], timeline.lanes["w1"]
    assert [(b.task, b.start, b.end, b.ending) for b in w0.bars] == [
        ("a", 1.0, 3.1, "lease_lost"),
        ("b", 1.1, 4.0, "unfinished"),  # the kill ends what the dead worker held
    ]
    assert [(b.task, b.end, b.ending) for b in w1.bars] == [("a", 3.5, "completed")]
    assert w0.losses == [3.1]
    assert w0.windows == [(1.5, 3.0, "pause (stop)")]
    assert w0.points == [(4.0, "kill-w0 (kill)")]
    # A window never closed runs to the end, and a listener's proxy belongs to its worker.
    assert w1.windows == [(5.0, 6.0, "cut (partition, never healed)")]
    assert len(w0.rows()) == 2 and len(w1.rows()) == 1


def test_timeline_svg_is_well_formed_and_labels_every_lane() -> None:
    svg = render_timeline(build(HISTORY), "stale-owner on <pg> & co")
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "stale-owner on <pg> & co" in texts and "w0" in texts and "w1" in texts


def result(scenario: str, outcome: str, **extra: Any) -> ScenarioResult:
    return ScenarioResult(scenario, "sqlite", outcome, 7, **extra)


def summary_file(directory: Path, name: str, results: list[ScenarioResult]) -> Path:
    descriptor = resolve_descriptor("sqlite")
    data = summary(
        {**backend_info(descriptor), "name": name},
        seed=7,
        server="here",
        probe=None,
        results=[r.to_json() for r in results],
        wall_time=1.0,
    )
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_report_matrix_has_a_cell_per_backend_and_scenario(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "events").mkdir(parents=True)
    (run_dir / "events" / "w0.jsonl").write_text(
        "\n".join(json.dumps(e) for e in HISTORY.events) + "\n"
    )
    a = summary_file(tmp_path, "a", [result("x", "passed", run_dir=str(run_dir), duration=2.0)])
    b = summary_file(
        tmp_path,
        "b",
        [
            result(
                "x",
                "failed",
                violations=["task t completed 2 times"],
                replay="zart-conformance run ...",
            ),
            result("y", "not_applicable", reason="needs listen_notify"),
        ],
    )
    report = write_report([a, b], tmp_path / "out").read_text()
    assert "| scenario | a | b |" in report
    assert (
        "| x | [✅ passed 2.0s](timelines/a/x.svg) | ❌ FAILED 0.0s (no events on disk) |" in report
    )
    assert "| y | not run | n/a |" in report
    assert "task t completed 2 times" in report and "needs listen_notify" in report
    assert (tmp_path / "out" / "timelines" / "a" / "x.svg").exists()


def test_report_refuses_two_summaries_of_one_backend_and_foreign_json(tmp_path: Path) -> None:
    a = summary_file(tmp_path, "a", [result("x", "passed")])
    copy = tmp_path / "copy.json"
    copy.write_text(a.read_text())
    with pytest.raises(DataError, match="a second summary of backend 'a'"):
        write_report([a, copy], tmp_path / "out")
    copy.write_text('{"results": []}')
    with pytest.raises(DataError, match="not a zart-conformance summary"):
        write_report([copy], tmp_path / "out")


def test_ledger_judges_failures_and_passes() -> None:
    descriptor = load_descriptor(backends_dir() / "sqlite.toml")
    ledgered = type(descriptor)(**{**descriptor.__dict__, "expected_failures": {"x": "bug 1"}})
    assert judge(result("x", "failed"), ledgered).outcome == "expected_failure"
    assert judge(result("x", "failed"), ledgered).passed
    fixed = judge(result("x", "passed"), ledgered)
    assert fixed.outcome == "unexpected_pass" and not fixed.passed
    assert judge(result("y", "failed"), ledgered).outcome == "failed"
    assert updated_ledger({"x": "bug 1", "z": "bug 2"}, [fixed]) == (
        '[expected_failures]\n"z" = "bug 2"'
    )


def matrix(cells: dict[str, dict[str, str]], why: dict[str, str]) -> dict[str, Any]:
    return {
        "backend": "postgres",
        "seed": 1,
        "seeds": dict.fromkeys(["reference", *cells], 1),
        "why": {m: {} for m in cells},
        "mutants": dict.fromkeys(cells, "Cx"),
        "reference": dict.fromkeys(why, "passed"),
        "cells": cells,
        "without_mutant": why,
    }


def test_matrix_problems_name_uncaught_mutants_and_unexplained_scenarios() -> None:
    good = matrix({"M": {"s1": "caught", "s2": "missed"}}, {"s1": "", "s2": "guards retries"})
    assert problems(good) == []
    assert "| M | Cx | s1 |" in render(good) and "| s1 | passed | X |" in render(good)
    bad = matrix({"M": {"s1": "missed", "s2": "missed"}}, {"s1": "", "s2": "why"})
    assert problems(bad) == [
        "mutant M (Cx) is caught by no scenario",
        "scenario s1 catches no mutant and does not say why it exists "
        '(add `without_mutant = "..."` to its file)',
    ]


def test_a_row_run_again_replaces_its_cells_and_keeps_a_failed_control() -> None:
    old = matrix({"M": {"s1": "error", "s2": "missed"}}, {"s1": "", "s2": "why"})
    old["why"]["M"] = {"s1": "TypeError: no listen_url"}
    assert problems(old)[0] == "mutant M could not run s1: TypeError: no listen_url"
    new = {**matrix({"M": {"s1": "caught", "s2": "missed"}}, {"s1": "", "s2": "why"}), "seed": 9}
    new["reference"] = {"s1": "passed", "s2": "flaky"}
    merged = merge(old, {**new, "mutants": {"M": "Cx"}})
    assert merged["cells"]["M"] == {"s1": "caught", "s2": "missed"}
    assert merged["seeds"]["M"] == 9 and merged["reference"]["s2"] == "flaky"
    assert "(rows run again: M with seed 9)" in render(merged)


def test_dsn_only_descriptor_uses_the_reference_backend(tmp_path: Path) -> None:
    text = (backends_dir() / "postgres.toml").read_text()
    path = tmp_path / "dsn.toml"
    path.write_text(text.replace('backend = "zart_ref.sql:SQLBackend"\n', ""))
    assert load_descriptor(path).factory == REFERENCE_FACTORY


DESCRIPTOR_PATH = str(backends_dir() / "sqlite.toml")


def test_module_attr_may_name_a_descriptor_path_or_a_callable() -> None:
    by_path = resolve_descriptor(f"{__name__}:DESCRIPTOR_PATH")
    assert by_path.name == "sqlite" and by_path.ref == f"{__name__}:DESCRIPTOR_PATH"
    by_call = resolve_descriptor(f"{__name__}:made_in_code")
    assert by_call.name == "sqlite" and by_call.ref == f"{__name__}:made_in_code"


def made_in_code() -> Any:
    return load_descriptor(Path(DESCRIPTOR_PATH))


def test_module_attr_of_the_wrong_kind_is_an_error() -> None:
    with pytest.raises(DataError, match=r"gave 3; expected a Descriptor or a descriptor file path"):
        resolve_descriptor(f"{__name__}:NOT_A_DESCRIPTOR")
    with pytest.raises(DataError, match="no backend named 'nope'"):
        resolve_descriptor("nope")


NOT_A_DESCRIPTOR = 3
