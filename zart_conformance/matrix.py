"""The mutation matrix: every broken backend against every scenario, the reference as control.

A mutant counts as caught by a scenario only where the reference backend passed the same
scenario in the same run; otherwise the failure says nothing about the mutant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from .backends import REFERENCE_FACTORY, Descriptor
from .data import scenarios_dir
from .mutants import MUTANTS
from .runner import RunOptions
from .scenario import Scenario, load_all
from .schema import DataError
from .suite_runner import Suite

REFERENCE = "reference"
CAUGHT, MISSED, NOT_APPLICABLE, FLAKY = "caught", "missed", "n/a", "flaky"


async def _row(
    descriptor: Descriptor,
    scenarios: Sequence[Scenario],
    options: RunOptions,
    jobs: asyncio.Semaphore,
    progress: Callable[[str], None],
) -> dict[str, tuple[str, str]]:
    suite = await Suite.open(descriptor, options)
    name = (
        descriptor.factory.rpartition(":")[2]
        if descriptor.factory != REFERENCE_FACTORY
        else REFERENCE
    )

    async def attempt(scenario: Scenario) -> tuple[str, str]:
        async with jobs:
            try:
                result = await suite.run(scenario)
            except Exception as exc:  # the kit could not run it: a hole, not a verdict
                return "error", f"{type(exc).__name__}: {exc}"
        return result.outcome, (result.violations + result.unmet + [""])[0]

    async def one(scenario: Scenario) -> tuple[str, tuple[str, str]]:
        outcome, why = await attempt(scenario)
        if outcome == "failed":
            # A catch must repeat: one failure under load is not evidence against the mutant.
            again, _ = await attempt(scenario)
            if again != "failed":
                outcome, why = FLAKY, f"failed once ({why}), then {again}"
        progress(f"{name} x {scenario.id}: {outcome}" + (f" ({why[:100]})" if why else ""))
        return scenario.id, (outcome, why)

    try:
        return dict(await asyncio.gather(*(one(s) for s in scenarios)))
    finally:
        suite.close()


def _outcomes(row: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {scenario: outcome for scenario, (outcome, _why) in row.items()}


async def mutation_matrix(
    descriptor: Descriptor,
    options: RunOptions,
    *,
    jobs: int = 2,
    only: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _text: None,
) -> dict[str, Any]:
    """The reference and every mutant (or ``only`` these) against every scenario."""
    unknown = sorted(set(only) - set(MUTANTS))
    if unknown:
        raise DataError(f"unknown mutant(s) {unknown}; known: {sorted(MUTANTS)}")
    scenarios = load_all(scenarios_dir())
    limit = asyncio.Semaphore(jobs)
    rows = {REFERENCE: await _row(descriptor, scenarios, options, limit, progress)}
    for mutant in only or MUTANTS:
        factory = f"zart_conformance.mutants:{mutant}"
        rows[mutant] = await _row(
            descriptor.with_factory(factory), scenarios, options, limit, progress
        )
    control = _outcomes(rows[REFERENCE])
    cells = {
        mutant: {s.id: _cell(rows[mutant][s.id][0], control[s.id]) for s in scenarios}
        for mutant in rows
        if mutant != REFERENCE
    }
    return {
        "backend": descriptor.name,
        "seed": options.seed,
        "seeds": dict.fromkeys(rows, options.seed),
        "mutants": dict(MUTANTS),
        "reference": control,
        "cells": cells,
        # The first violation of each failing run: what a catch (or a flake) looked like.
        "why": {
            name: {sid: why for sid, (_outcome, why) in row.items() if why}
            for name, row in rows.items()
        },
        "without_mutant": {s.id: s.without_mutant for s in scenarios},
    }


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the rows ``new`` ran again; the new run's reference must pass too."""
    if old["backend"] != new["backend"]:
        raise DataError(f"cannot merge a {new['backend']} row into a {old['backend']} matrix")
    merged = {**old, "cells": {**old["cells"]}, "why": {**old["why"]}, "seeds": {**old["seeds"]}}
    for mutant in new["cells"]:
        merged["cells"][mutant] = new["cells"][mutant]
        merged["why"][mutant] = new["why"][mutant]
        merged["seeds"][mutant] = new["seed"]
    # A row is only as good as the control it ran beside.
    for scenario, control in new["reference"].items():
        if control != "passed" and merged["reference"][scenario] == "passed":
            merged["reference"][scenario] = control
    merged["mutants"] = {**old["mutants"], **new["mutants"]}
    merged["without_mutant"] = new["without_mutant"]
    return merged


def _cell(outcome: str, control: str) -> str:
    if outcome in ("not_applicable", "error"):
        return NOT_APPLICABLE if outcome == "not_applicable" else "error"
    if control != "passed":
        return f"reference {control}"
    if outcome == FLAKY:
        return FLAKY
    return CAUGHT if outcome == "failed" else MISSED


def problems(matrix: dict[str, Any]) -> list[str]:
    """What makes a matrix unacceptable: a mutant nothing catches, a scenario with no reason."""
    found = [
        f"mutant {mutant} could not run {scenario}: {matrix['why'][mutant].get(scenario, '')}"
        for mutant, row in matrix["cells"].items()
        for scenario, cell in row.items()
        if cell == "error"
    ]
    for mutant, row in matrix["cells"].items():
        if CAUGHT not in row.values():
            found.append(f"mutant {mutant} ({matrix['mutants'][mutant]}) is caught by no scenario")
    for scenario, control in matrix["reference"].items():
        if control not in ("passed", "not_applicable"):
            found.append(f"the reference backend {control} {scenario}: the matrix is not valid")
        caught = any(row[scenario] == CAUGHT for row in matrix["cells"].values())
        if not caught and not matrix["without_mutant"][scenario]:
            found.append(
                f"scenario {scenario} catches no mutant and does not say why it exists "
                '(add `without_mutant = "..."` to its file)'
            )
    return found


def _reruns(matrix: dict[str, Any]) -> str:
    again = {m: seed for m, seed in matrix["seeds"].items() if seed != matrix["seed"]}
    if not again:
        return ""
    return " (rows run again: " + ", ".join(f"{m} with seed {s}" for m, s in again.items()) + ")"


def render(matrix: dict[str, Any]) -> str:
    scenarios = sorted(matrix["reference"])
    mutants = list(matrix["cells"])
    cells = matrix["cells"]
    lines = [
        "# Mutation matrix",
        "",
        "Each deliberately broken backend (`zart_conformance/mutants.py`) against each scenario,",
        f"on {matrix['backend']} with seed {matrix['seed']}{_reruns(matrix)}. A mutant is *caught* by a scenario",
        "that failed it while the unbroken reference backend passed the same scenario in the",
        "same run. Regenerate with `nox -s mutation-matrix`; `tests/test_mutation_matrix.py`",
        "holds this file to the code.",
        "",
        "| mutant | clause it breaks | caught by |",
        "|---|---|---|",
    ]
    for mutant in mutants:
        caught = [s for s in scenarios if cells[mutant][s] == CAUGHT]
        lines.append(
            f"| {mutant} | {matrix['mutants'][mutant]} | {', '.join(caught) or '**none**'} |"
        )
    lines += [
        "",
        "## The whole grid",
        "",
        "X: caught (failed twice); ~: failed once, then passed (not counted); .: passed",
        "(missed); n/a: not applicable. Columns are the mutants above, in order; the first is",
        "the reference backend's own outcome. The first violation of every failing run is in",
        "mutation-matrix.json under `why`.",
        "",
        "| scenario | reference | " + " | ".join(f"M{i + 1}" for i in range(len(mutants))) + " |",
        "|---|---|" + "---|" * len(mutants),
    ]
    marks = {CAUGHT: "X", MISSED: ".", FLAKY: "~"}
    for scenario in scenarios:
        row = [marks.get(cells[m][scenario], cells[m][scenario]) for m in mutants]
        lines.append(f"| {scenario} | {matrix['reference'][scenario]} | " + " | ".join(row) + " |")
    lines += ["", ", ".join(f"M{i + 1} {m}" for i, m in enumerate(mutants)), ""]
    lines += ["## Scenarios that catch no mutant, and why they exist", ""]
    idle = [s for s in scenarios if not any(cells[m][s] == CAUGHT for m in mutants)]
    for scenario in idle:
        lines.append(
            f"- **{scenario}**: {matrix['without_mutant'][scenario] or '(no reason given)'}"
        )
    if not idle:
        lines.append("None: every scenario catches at least one mutant.")
    return "\n".join(lines) + "\n"
