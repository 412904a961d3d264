"""The conformance suite against the reference backends, and the mutants it must catch."""

from __future__ import annotations

import pytest

from tests.conftest import server_url
from zart_conformance import mutants
from zart_conformance.backends import resolve_descriptor
from zart_conformance.data import scenarios_dir
from zart_conformance.provision import provision
from zart_conformance.runner import RunOptions, ScenarioResult, run_scenario
from zart_conformance.scenario import load_all, load_scenario
from zart_conformance.suite_runner import new_seed

SCENARIOS = [s.id for s in load_all(scenarios_dir())]
SEED = new_seed()
pytestmark = pytest.mark.conformance


async def run(backend: str, scenario_id: str, factory: str | None = None) -> ScenarioResult:
    if backend != "sqlite":
        server_url(backend)
    descriptor = resolve_descriptor(backend)
    if factory:
        descriptor = descriptor.with_factory(factory)
    server = provision(descriptor)
    try:
        scenario = load_scenario(scenarios_dir() / f"{scenario_id}.toml")
        return await run_scenario(scenario, descriptor, server, RunOptions(seed=SEED))
    finally:
        server.close()


def explain(result: ScenarioResult) -> str:
    problems = "\n".join(result.violations + result.unmet)
    return f"{problems}\nrun dir: {result.run_dir}\nreplay: {result.replay}"


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
@pytest.mark.parametrize("scenario_id", SCENARIOS)
async def test_reference_backend_passes(backend: str, scenario_id: str) -> None:
    result = await run(backend, scenario_id)
    assert result.passed, explain(result)
    if result.outcome == "not_applicable":
        assert f"which backend '{backend}' does not declare" in result.reason
        assert backend == "sqlite" or scenario_id == "listener-cut"  # LISTEN: PostgreSQL only
    else:
        # The checker already held every task to the status its group expects.
        assert result.evidence["tasks"] > 0 and result.evidence["handler_starts"] > 0


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
]


def test_every_mutant_is_tested() -> None:
    assert {name for name, _, _ in MUTANTS} == set(mutants.MUTANTS)


@pytest.mark.parametrize(("mutant", "scenario_id", "signatures"), MUTANTS)
async def test_broken_backend_is_caught(
    mutant: str, scenario_id: str, signatures: tuple[str, ...]
) -> None:
    result = await run("postgres", scenario_id, factory=f"zart_conformance.mutants:{mutant}")
    assert result.outcome == "failed", f"{mutant} passed {scenario_id}: the kit missed it"
    found = [v for v in result.violations + result.unmet if any(s in v for s in signatures)]
    assert found, f"{mutant} failed for another reason than expected:\n{explain(result)}"
