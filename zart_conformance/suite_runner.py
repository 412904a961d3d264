"""Run a set of scenarios on one backend: provision once, probe, isolate each run, judge.

The command line and the pytest plugin both drive a suite through :class:`Suite`, so a run
means the same thing whichever way it was started.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zart_ref.errors import ConfigError

from .backends import Descriptor
from .data import scenarios_dir
from .ledger import check_ledger, judge
from .probe import ProbeReport, probe
from .provision import Server, provision
from .runner import RunOptions, ScenarioResult, run_scenario
from .scenario import Scenario, load_all, load_scenario
from .schema import DataError


class CapabilityError(ConfigError):
    """The backend declares a capability the probe found absent."""


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


@dataclass
class Suite:
    """One backend's server, its probe report and the run options, shared by its scenarios."""

    descriptor: Descriptor
    server: Server
    probe: ProbeReport
    options: RunOptions

    @classmethod
    async def open(cls, descriptor: Descriptor, options: RunOptions) -> Suite:
        """Provision, check the ledger, and probe; a declared-but-absent capability stops here."""
        check_ledger(descriptor, (s.id for s in load_all(scenarios_dir())))
        server = provision(descriptor)
        try:
            report = await probe(descriptor, server, options.runs_root)
            problems = report.problems(descriptor.capabilities)
            if problems:
                raise CapabilityError(
                    f"backend {descriptor.name!r} ({descriptor.path}): "
                    + "; ".join(problems)
                    + ". Remove the capability from [capabilities] or fix the backend."
                )
        except BaseException:
            server.close()
            raise
        return cls(descriptor, server, report, options)

    async def run(self, scenario: Scenario) -> ScenarioResult:
        result = await run_scenario(scenario, self.descriptor, self.server, self.options)
        return judge(result, self.descriptor)

    def close(self) -> None:
        self.server.close()


async def run_suite(
    descriptor: Descriptor, scenario_ids: Sequence[str], options: RunOptions
) -> tuple[Suite, list[ScenarioResult]]:
    """The suite and one result per scenario, in file order."""
    scenarios = select(load_all(scenarios_dir()), scenario_ids)
    suite = await Suite.open(descriptor, options)
    try:
        results = []
        for scenario in scenarios:
            if options.progress:
                options.progress(f"{scenario.id}: running on {descriptor.name}")
            results.append(await suite.run(scenario))
        return suite, results
    finally:
        suite.close()
