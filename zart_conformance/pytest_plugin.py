"""The pytest plugin (entry point ``pytest11``): the conformance suite as ordinary pytest tests.

``pytest --zart-backend NAME|PATH|module:attr`` runs the whole suite against that backend.
A project of its own writes ``from zart_conformance.suite import *`` in a test module and
provides the backend through a ``zart_backend`` fixture in its conftest. Scenarios are
selected with ``-k`` and the ``zart_<family>`` markers; xdist (``-n auto``) runs them apart.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zart_ref.errors import ConfigError, DatabaseUnavailable

from .backends import Descriptor, resolve_descriptor
from .data import scenarios_dir
from .ledger import updated_ledger
from .runner import RunOptions, ScenarioResult
from .scenario import FAMILIES, Scenario, load_all
from .suite_runner import Suite, new_seed
from .summary import backend_info, summary

SEED = pytest.StashKey[int]()
RECORD = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zart", "Zart conformance kit")
    group.addoption(
        "--zart-backend",
        default=None,
        help="Backend to run the suite against: a shipped name (postgres, mysql, sqlite), a "
        "descriptor .toml, a module:attr giving a Descriptor, or a registered entry point. "
        "Without test paths, runs the whole suite.",
    )
    group.addoption("--zart-seed", type=int, default=None, help="Replay a run with this seed.")
    group.addoption(
        "--zart-report",
        default=None,
        metavar="DIR",
        help="Write a JSON summary per backend (DIR/<backend>.json).",
    )
    group.addoption(
        "--zart-keep",
        action="store_true",
        help="Keep each run's schema/database even if it passes.",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zart: a scenario of the Zart conformance suite")
    for family, text in FAMILIES.items():
        config.addinivalue_line("markers", f"zart_{family}: Zart scenarios about {text}")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "zart_seed" in workerinput:
        config.stash[SEED] = workerinput["zart_seed"]  # xdist: every worker, one seed
    else:
        chosen = config.getoption("zart_seed")
        config.stash[SEED] = chosen if chosen is not None else new_seed()
    config.pluginmanager.register(_Collector(config), "zart-collector")
    if config.getoption("zart_backend") and config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [str(Path(__file__).with_name("suite.py"))]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the controller's seed to each worker."""
    node.workerinput["zart_seed"] = node.config.stash[SEED]


def pytest_report_header(config: pytest.Config) -> str:
    return f"zart: seed {config.stash[SEED]} (replay a run with --zart-seed {config.stash[SEED]})"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "zart_scenario" not in metafunc.fixturenames:
        return
    params = [
        pytest.param(s, id=s.id, marks=[pytest.mark.zart, getattr(pytest.mark, f"zart_{s.family}")])
        for s in load_all(scenarios_dir())
    ]
    metafunc.parametrize("zart_scenario", params)


@pytest.fixture(scope="session")
def zart_backend(pytestconfig: pytest.Config) -> Descriptor | str:
    """The backend under test; a conftest overrides this fixture to provide its own."""
    ref = pytestconfig.getoption("zart_backend")
    if not ref:
        raise pytest.UsageError(
            "zart: no backend to test. Pass --zart-backend NAME|PATH|module:attr, or define a "
            "session fixture `zart_backend` in your conftest returning a Descriptor or a "
            "descriptor path."
        )
    return str(ref)


@pytest.fixture(scope="session")
def zart_suite(zart_backend: Descriptor | str, pytestconfig: pytest.Config) -> Iterator[Suite]:
    """Provisioned and probed once per backend per test process.

    A wrong descriptor or a capability the probe cannot find ends the session with one line:
    every scenario would fail the same way.
    """
    option = pytestconfig.getoption("zart_backend")
    try:
        descriptor = (
            zart_backend
            if isinstance(zart_backend, Descriptor)
            else resolve_descriptor(str(zart_backend))
        )
        if option and resolve_descriptor(str(option)).path != descriptor.path:
            raise ConfigError(
                f"--zart-backend {option} was given, but the conftest's zart_backend fixture "
                f"provides {descriptor.ref or descriptor.path}; drop one of them"
            )
        options = RunOptions(
            seed=pytestconfig.stash[SEED], keep=bool(pytestconfig.getoption("zart_keep"))
        )
        suite = asyncio.run(Suite.open(descriptor, options))
    except ConfigError as exc:
        pytest.exit(f"zart: error: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    except DatabaseUnavailable as exc:
        pytest.exit(f"zart: error: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)
    try:
        yield suite
    finally:
        suite.close()


def run_scenario_test(suite: Suite, scenario: Scenario, item: pytest.Item) -> None:
    """The body of every generated test: run, record, and turn the verdict into pytest's."""
    result = asyncio.run(suite.run(scenario))
    item.stash[RECORD] = {
        "result": result.to_json(),
        "backend": backend_info(suite.descriptor),
        "server": suite.server.how,
        "probe": suite.probe.to_json(),
    }
    item.user_properties.append(("zart_outcome", result.outcome))
    item.user_properties.append(("zart_seed", result.seed))
    for counter in result.checked:
        item.user_properties.append((f"zart_evidence_{counter}", result.evidence.get(counter, 0)))
    if result.outcome == "not_applicable":
        pytest.skip(f"not applicable on {result.backend}: {result.reason}")
    if result.outcome == "expected_failure":
        pytest.xfail(result.reason)
    if result.outcome != "passed":
        pytest.fail(explain(result, item, suite.descriptor), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Carry the run's record on the report: xdist ships report attributes to the controller."""
    report = yield
    if call.when == "call" and RECORD in item.stash:
        report.zart_record = json.dumps(item.stash[RECORD])
    return report


def explain(result: ScenarioResult, item: pytest.Item, descriptor: Descriptor) -> str:
    lines = [f"{result.scenario} {result.outcome} on {result.backend} (seed {result.seed})"]
    lines += [f"  - {line}" for line in ([result.reason] if result.reason else [])]
    lines += [f"  - {line}" for line in result.violations + result.unmet]
    lines.append(f"run directory: {result.run_dir}")
    lines.append(f"replay: {result.replay}")
    lines.append(f"   or: {replay_with_pytest(item, descriptor, result.seed)}")
    return "\n".join(lines)


def replay_with_pytest(item: pytest.Item, descriptor: Descriptor, seed: int) -> str:
    """The same test again; the suite module by path when it was collected from outside."""
    nodeid = item.nodeid
    if nodeid.startswith("::") or nodeid.startswith(".."):
        nodeid = f"{item.path}::{item.name}"
        return f"pytest '{nodeid}' --zart-backend {descriptor.ref or descriptor.path} --zart-seed {seed}"
    return f"pytest '{nodeid}' --zart-seed {seed}"


class _Collector:
    """Gathers results where reports arrive (the xdist controller, or the only process)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = getattr(report, "zart_record", None)
        if record is not None and report.when == "call":
            self.records.append(json.loads(record))

    def by_backend(self) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.records:
            grouped[record["backend"]["name"]].append(record)
        return dict(sorted(grouped.items()))

    def pytest_sessionfinish(self) -> None:
        directory = self.config.getoption("zart_report")
        if not directory or hasattr(self.config, "workerinput") or not self.records:
            return
        Path(directory).mkdir(parents=True, exist_ok=True)
        for name, records in self.by_backend().items():
            first = records[0]
            data = summary(
                first["backend"],
                seed=self.config.stash[SEED],
                server=first["server"],
                probe=first["probe"],
                results=[r["result"] for r in records],
                wall_time=sum(r["result"]["duration"] for r in records),
            )
            (Path(directory) / f"{name}.json").write_text(json.dumps(data, indent=2))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        write = terminalreporter.write_line
        terminalreporter.section("zart conformance")
        write(f"seed {self.config.stash[SEED]}")
        for name, records in self.by_backend().items():
            results = [ScenarioResult(**r["result"]) for r in records]
            outcomes = Counter(r.outcome for r in results)
            write(f"{name}: " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())))
            for result in results:
                if result.outcome == "not_applicable":
                    write(f"  not applicable: {result.scenario}: {result.reason}")
            if outcomes["unexpected_pass"]:
                ledger = records[0]["backend"]["expected_failures"]
                write(f"  the ledger of {name} is out of date; updated ledger:")
                for line in updated_ledger(ledger, results).splitlines():
                    write(f"    {line}")
        directory = self.config.getoption("zart_report")
        if directory:
            write(f"JSON summaries in {directory}/")
