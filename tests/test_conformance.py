"""The conformance suite against the reference backends, and the mutants it must catch.

The reference backends run the suite the way a third party does: through the pytest plugin
and ``from zart_conformance.suite import *``, with the backend from a ``zart_backend`` fixture.
"""

from __future__ import annotations

import pytest

from tests.conftest import server_url
from zart_conformance import mutants
from zart_conformance.backends import resolve_descriptor
from zart_conformance.data import scenarios_dir
from zart_conformance.pytest_plugin import SEED
from zart_conformance.runner import RunOptions, ScenarioResult
from zart_conformance.scenario import load_all, load_scenario
from zart_conformance.suite import *  # noqa: F403  (test_zart_scenario: one test per scenario)
from zart_conformance.suite_runner import Suite

pytestmark = pytest.mark.conformance
REFERENCE = ["sqlite", "postgres", "mysql"]


@pytest.fixture(scope="session", params=REFERENCE)
def zart_backend(request: pytest.FixtureRequest) -> str:
    if request.param != "sqlite":
        server_url(request.param)
    return str(request.param)


# What each reference backend must report as not applicable (and nothing else).
NOT_APPLICABLE = {
    "postgres": set(),
    "mysql": {"listener-cut"},
    "sqlite": {
        "ambiguous-commit",
        "clock-skew",
        "database-down-at-start",
        "latency",
        "listener-cut",
        "partition",
        "pool-exhaustion",
    },
}


@pytest.mark.parametrize("backend", REFERENCE)
def test_not_applicable_scenarios_are_exactly_the_ones_needing_what_the_backend_lacks(
    backend: str,
) -> None:
    capabilities = resolve_descriptor(backend).capabilities
    lacking = {s.id for s in load_all(scenarios_dir()) if not set(s.requires) <= capabilities}
    assert lacking == NOT_APPLICABLE[backend]


async def run(backend: str, scenario_id: str, factory: str, seed: int) -> ScenarioResult:
    server_url(backend)
    descriptor = resolve_descriptor(backend).with_factory(factory)
    suite = await Suite.open(descriptor, RunOptions(seed=seed))
    try:
        return await suite.run(load_scenario(scenarios_dir() / f"{scenario_id}.toml"))
    finally:
        suite.close()


def explain(result: ScenarioResult) -> str:
    problems = "\n".join(result.violations + result.unmet)
    return f"{problems}\nrun dir: {result.run_dir}\nreplay: {result.replay}"


# Each mutant, the scenario that must catch it, and a violation it must be caught with.
MUTANTS = [
    ("NonAtomicClaim", "concurrent-claims", ("overlapping owners", "completed 2 times")),
    ("OverClaim", "concurrent-claims", ("tasks but asked for at most",)),
    ("TokenlessComplete", "stale-owner", ("completed 2 times",)),
    ("AppClockLeases", "clock-skew", ("(lost)", "evidence lease_lost")),
    ("SlowHeartbeat", "long-task-heartbeat", ("evidence reexecuted", "evidence lease_lost")),
    ("NoRequeue", "shutdown-requeue", ("evidence requeued_before_expiry",)),
    ("NoStatementTimeouts", "partition", ("evidence max_db_call_ms",)),
    ("ForgetfulSteps", "step-memoization-crash", ("ran again after it completed",)),
    ("NoOrphanRecovery", "crash-mid-task", ("ended 'running', expected 'completed' (lost)",)),
    ("ImmediateRetry", "retry-backoff", ("was retried at",)),
    # The wait never sees its event: it is still waiting, or its timeout failed it.
    (
        "UnbufferedEvents",
        "event-before-wait",
        ("ended 'scheduled', expected 'completed'", "ended 'failed', expected 'completed'"),
    ),
    ("EarlyWake", "durable-sleep-restart", ("before its wake time",)),
    ("NoResubscribe", "listener-cut", ("fault 'schedule-after' never fired",)),
    ("ErrorsAsNoWork", "database-down-at-start", ("evidence health_not_ready = 0",)),
    ("LostCancel", "cancel-in-flight", ("ended 'completed', expected 'cancelled'",)),
]


def test_every_mutant_is_tested() -> None:
    assert {name for name, _, _ in MUTANTS} == set(mutants.MUTANTS)


@pytest.mark.parametrize(("mutant", "scenario_id", "signatures"), MUTANTS)
async def test_broken_backend_is_caught(
    mutant: str, scenario_id: str, signatures: tuple[str, ...], pytestconfig: pytest.Config
) -> None:
    factory = f"zart_conformance.mutants:{mutant}"
    result = await run("postgres", scenario_id, factory, pytestconfig.stash[SEED])
    assert result.outcome == "failed", f"{mutant} passed {scenario_id}: the kit missed it"
    found = [v for v in result.violations + result.unmet if any(s in v for s in signatures)]
    assert found, f"{mutant} failed for another reason than expected:\n{explain(result)}"
