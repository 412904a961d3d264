"""Run a set of scenarios on one backend: provision once, isolate each run, collect results."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from .backends import Descriptor
from .data import scenarios_dir
from .provision import provision
from .runner import RunOptions, ScenarioResult, run_scenario
from .scenario import Scenario, load_all, load_scenario
from .schema import DataError


def new_seed() -> int:
    return random.SystemRandom().randrange(1, 2**31)


def _is_file(name: str) -> bool:
    return name.endswith(".toml") or "/" in name


def select(scenarios: Sequence[Scenario], ids: Sequence[str]) -> list[Scenario]:
    """Shipped scenarios by id, and scenario files of the user's own by path."""
    if not ids:
        return list(scenarios)
    known = {s.id: s for s in scenarios}
    unknown = [i for i in ids if not _is_file(i) and i not in known]
    if unknown:
        raise DataError(f"unknown scenario(s) {unknown}; known: {sorted(known)}")
    return [load_scenario(Path(i)) if _is_file(i) else known[i] for i in ids]


async def run_suite(
    descriptor: Descriptor, scenario_ids: Sequence[str], options: RunOptions
) -> tuple[str, list[ScenarioResult]]:
    """Returns where the server came from and one result per scenario, in file order."""
    scenarios = select(load_all(scenarios_dir()), scenario_ids)
    server = provision(descriptor)
    try:
        results = []
        for scenario in scenarios:
            if options.progress:
                options.progress(f"{scenario.id}: running on {descriptor.name}")
            results.append(await run_scenario(scenario, descriptor, server, options))
        return server.how, results
    finally:
        server.close()
