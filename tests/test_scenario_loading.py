"""Scenario files and backend descriptors load, and a malformed one is rejected by name.

Every malformed case starts from a valid minimal file and changes one thing; the error must name
the file, the dotted key and what was wrong with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from zart_conformance.backends import load_descriptor
from zart_conformance.data import backends_dir, scenarios_dir
from zart_conformance.scenario import Scenario, load_all, load_scenario
from zart_conformance.schema import DataError

SHIPPED_SCENARIOS = sorted(scenarios_dir().glob("*.toml"))
SHIPPED_BACKENDS = sorted(backends_dir().glob("*.toml"))

MINI = """\
id = "mini"
title = "Minimal"
family = "leases"
clauses = ["C1"]

[[workload]]
count = 3
handler = "sleep"
params = { ms = 1 }

[workers]
count = 2
config = { lease_duration = 1.0 }

[[faults]]
id = "kill-w0"
action = "kill"
target = "w0"
when = { event = "handler_start", worker = "w0" }

[expect]
min = { killed_in_flight = 1 }
"""
WORKLOAD = '[[workload]]\ncount = 3\nhandler = "sleep"\nparams = { ms = 1 }\n'

DESCRIPTOR = """\
name = "pg"
backend = "zart_ref.sql:SQLBackend"
dialect = "postgresql"
isolation = "schema"

[provision]
url_env = "PG_URL"

[capabilities]
concurrent_workers = true
"""


def write(tmp_path: Path, name: str, text: str, old: str = "", new: str = "") -> Path:
    """``text`` with its only occurrence of ``old`` replaced by ``new``, written to ``name``."""
    if old:
        assert text.count(old) == 1, f"{old!r} must occur once in the base text"
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED_SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenario_loads_with_and_without_concurrent_workers(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.id == path.stem
    assert scenario.for_capabilities({"concurrent_workers"}) is scenario
    sequential = scenario.for_capabilities(set())
    assert isinstance(sequential, Scenario)
    assert sequential.id == scenario.id
    assert sequential.sequential == {}
    if scenario.sequential:
        assert sequential.workers == 1
        assert sequential.raw != scenario.raw


def test_sequential_overrides_merge_into_the_scenario() -> None:
    by_id = {s.id: s.for_capabilities(set()) for s in load_all(scenarios_dir())}
    assert sorted(by_id) == [p.stem for p in SHIPPED_SCENARIOS]
    claims = by_id["concurrent-claims"]
    assert claims.expect_min == {"workers_with_work": 1, "claims": 30, "completed": 300}
    assert claims.expect_max == {"reexecuted": 0, "lease_lost": 0}  # kept from the base
    assert claims.worker_config["lease_duration"] == 10.0  # deep merge keeps workers.config
    crash = by_id["crash-mid-task"]
    assert [(f.id, f.action, f.target) for f in crash.faults] == [
        ("kill-w0", "kill", "w0"),
        ("start-w1", "start", "w1"),
    ]
    assert crash.faults[1].when.after == "kill-w0"


@pytest.mark.parametrize("path", SHIPPED_BACKENDS, ids=lambda p: p.stem)
def test_shipped_backend_descriptor_loads(path: Path) -> None:
    descriptor = load_descriptor(path)
    assert descriptor.name == path.stem
    assert descriptor.factory == "zart_ref.sql:SQLBackend"
    assert ("concurrent_workers" in descriptor.capabilities) == (descriptor.dialect != "sqlite")
    assert (descriptor.url_env is None) == (descriptor.dialect == "sqlite")


def test_minimal_base_texts_are_valid(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, "mini.toml", MINI))
    assert (scenario.workers, scenario.expect_min) == (2, {"killed_in_flight": 1})
    assert [g.count for g in scenario.workload] == [3]
    assert scenario.description == ""  # optional: its default is not checked as file data
    descriptor = load_descriptor(write(tmp_path, "pg.toml", DESCRIPTOR))
    assert descriptor.capabilities == {"concurrent_workers"}
    assert (descriptor.url_env, descriptor.description) == ("PG_URL", "")


def test_malformed_sequential_override_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "mini.toml", MINI + "\n[sequential]\nworkers = { cuont = 1 }\n")
    with pytest.raises(DataError) as caught:
        load_scenario(path)  # at load time, not only when a SQLite run applies the override
    assert str(path) in str(caught.value)
    assert "workers.cuont" in str(caught.value)
    assert "[sequential]" in str(caught.value)


NL_CLAUSES = 'clauses = ["C1"]\n'
WHEN = 'when = { event = "handler_start", worker = "w0" }'

# (id, text to replace, replacement, fragments the message must contain besides the path)
BAD_SCENARIOS = [
    ("clause-name", 'clauses = ["C1"]', 'clauses = ["banana"]', ["key 'clauses'", "'banana'"]),
    (
        "param-typo",
        "params = { ms = 1 }",
        "params = { mss = 1 }",
        ["workload[0].params.mss", "takes: ms"],
    ),
    (
        "param-type",
        "params = { ms = 1 }",
        'params = { ms = "long" }',
        ["workload[0].params.ms", "'long'"],
    ),
    ("param-nan", "params = { ms = 1 }", "params = { ms = nan }", ["workload[0].params.ms", "nan"]),
    ("invalid-toml", 'title = "Minimal"', 'title = "Minimal', ["not valid TOML", "line 2"]),
    ("missing-id", 'id = "mini"\n', "", ["missing required key 'id'"]),
    ("id-mismatch", 'id = "mini"', 'id = "other"', ["key 'id'", "'other'", "'mini.toml'"]),
    ("unknown-top-key", NL_CLAUSES, NL_CLAUSES + "setle = 1.0\n", ["setle", "settle"]),
    ("missing-workload", WORKLOAD, "", ["missing required key 'workload'"]),
    ("workload-count-0", "count = 3", "count = 0", ["'workload[0].count'", ">= 1, got 0"]),
    ("unknown-handler", '"sleep"', '"sleeep"', ["'workload[0].handler'", "'sleeep'"]),
    (
        "unknown-worker-setting",
        "lease_duration = 1.0",
        "lease_duraton = 1.0",
        ["'workers.config'", "lease_duraton", "lease_duration"],
    ),
    (
        "negative-lease",
        "lease_duration = 1.0",
        "lease_duration = -1.0",
        ["'workers.config'", "lease_duration", "-1.0"],
    ),
    ("unknown-action", 'action = "kill"', 'action = "explode"', ["'faults[0].action'", "explode"]),
    ("target-not-a-worker", 'target = "w0"', 'target = "w9"', ["'faults[0].target'", "'w9'"]),
    ("unknown-after", WHEN, 'when = { after = "nope" }', ["'faults[0].when.after'", "'nope'"]),
    (
        "unknown-event",
        '"handler_start"',
        '"handler_begin"',
        ["'faults[0].when.event'", "'handler_begin'"],
    ),
    (
        "unknown-counter",
        "killed_in_flight = 1",
        "killed_in_fligth = 1",
        ["'expect.min.killed_in_fligth'", "unknown counter"],
    ),
    (
        "fault-without-expect-min",
        "min = { killed_in_flight = 1 }",
        "max = { reexecuted = 0 }",
        ["'expect.min'", "faults must require evidence"],
    ),
    (
        "unknown-capability",
        NL_CLAUSES,
        NL_CLAUSES + 'requires = ["teleport"]\n',
        ["'requires'", "'teleport'"],
    ),
    ("unknown-family", 'family = "leases"', 'family = "lease"', ["'family'", "'lease'", "claims"]),
    ("missing-family", 'family = "leases"\n', "", ["missing required key 'family'"]),
    ("nan-timeout", NL_CLAUSES, NL_CLAUSES + "timeout = nan\n", ["'timeout'", "got nan"]),
    ("nan-delay", WHEN, "when = { delay = nan }", ["'faults[0].when.delay'", "got nan"]),
]


@pytest.mark.parametrize(
    ("old", "new", "fragments"), [c[1:] for c in BAD_SCENARIOS], ids=[c[0] for c in BAD_SCENARIOS]
)
def test_malformed_scenario_is_rejected(
    tmp_path: Path, old: str, new: str, fragments: list[str]
) -> None:
    path = write(tmp_path, "mini.toml", MINI, old, new)
    with pytest.raises(DataError) as caught:
        load_scenario(path)
    message = str(caught.value)
    for fragment in [str(path), *fragments]:
        assert fragment in message


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        pytest.param(
            "concurrent_workers = true",
            "time_travel = true",
            ["'capabilities.time_travel'", "unknown capability"],
            id="unknown-capability",
        ),
        pytest.param(
            'dialect = "postgresql"',
            'dialect = "oracle"',
            ["'dialect'", "'oracle'"],
            id="bad-dialect",
        ),
        pytest.param(
            'url_env = "PG_URL"\n',
            "",
            ["missing required key 'provision.url_env'"],
            id="postgres-without-url-env",
        ),
        pytest.param(
            'isolation = "schema"',
            'isolation = "file"',
            ["'isolation'", "isolated by 'schema', not 'file'"],
            id="isolation-of-another-dialect",
        ),
        pytest.param(
            'isolation = "schema"',
            'isolaton = "schema"',
            ["missing required key 'isolation' (found 'isolaton': misspelled?)"],
            id="misspelled-required-key",
        ),
        pytest.param(
            "[capabilities]",
            "[expected_failures]\nstale-owner = 3\n\n[capabilities]",
            ["'expected_failures.stale-owner'", "3"],
            id="ledger-reason-not-a-string",
        ),
    ],
)
def test_malformed_backend_descriptor_is_rejected(
    tmp_path: Path, old: str, new: str, fragments: list[str]
) -> None:
    path = write(tmp_path, "pg.toml", DESCRIPTOR, old, new)
    with pytest.raises(DataError) as caught:
        load_descriptor(path)
    for fragment in [str(path), *fragments]:
        assert fragment in str(caught.value)
