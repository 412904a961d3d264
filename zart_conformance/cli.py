"""``zart-conformance``: run the scenario suite against a backend and print what it proved."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from zart_ref.errors import ConfigError, DatabaseUnavailable

from .backends import resolve_descriptor
from .checker import COUNTERS
from .data import scenarios_dir
from .runner import RunOptions, ScenarioResult
from .scenario import load_all
from .suite_runner import new_seed, run_suite

# Markup off: messages carry user text ([sequential], [containers]) that is not markup.
console = Console(stderr=False, highlight=False, markup=False)
MAX_LISTED = 12


@click.group()
def main() -> None:
    """The Zart conformance kit."""


@main.command("list")
def list_scenarios() -> None:
    """List the shipped scenarios with their clauses and requirements."""
    try:
        scenarios = load_all(scenarios_dir())
    except ConfigError as exc:
        console.print(f"zart-conformance: error: {exc}", style="red")
        sys.exit(2)
    for scenario in scenarios:
        needs = ", ".join(scenario.requires) or "-"
        console.print(
            f"{scenario.id}  {scenario.title}  (clauses {', '.join(scenario.clauses)}; needs {needs})"
        )


@main.command()
@click.option(
    "--backend", required=True, help="Shipped backend name (postgres, sqlite) or descriptor path."
)
@click.option("--scenario", "scenario_ids", multiple=True, help="Run only these scenario ids.")
@click.option("--seed", type=int, default=None, help="Replay a run with this seed.")
@click.option(
    "--factory", default=None, help="module:callable overriding the descriptor's backend."
)
@click.option("--keep", is_flag=True, help="Keep the run's schema/database even when it passes.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a JSON summary here.",
)
def run(
    backend: str,
    scenario_ids: tuple[str, ...],
    seed: int | None,
    factory: str | None,
    keep: bool,
    json_path: Path | None,
) -> None:
    """Run the suite (or some scenarios) against one backend."""
    seed = seed if seed is not None else new_seed()
    try:
        descriptor = resolve_descriptor(backend)
        if factory:
            descriptor = descriptor.with_factory(factory)
        console.print(
            f"zart-conformance: backend {descriptor.name} ({descriptor.factory}), seed {seed}"
        )
        options = RunOptions(
            seed=seed, keep=keep, progress=lambda text: console.print(f"  {text}", style="dim")
        )
        how, results = asyncio.run(run_suite(descriptor, scenario_ids, options))
    except ConfigError as exc:
        console.print(f"zart-conformance: error: {exc}", style="red")
        sys.exit(2)
    except DatabaseUnavailable as exc:
        console.print(f"zart-conformance: error: {exc}", style="red")
        sys.exit(3)
    console.print(f"server: {how}")
    print_results(results)
    if json_path:
        json_path.write_text(
            json.dumps(
                {
                    "seed": seed,
                    "backend": descriptor.name,
                    "server": how,
                    "results": [r.to_json() for r in results],
                },
                indent=2,
            )
        )
    if not all(r.passed for r in results):
        sys.exit(1)


def print_results(results: list[ScenarioResult]) -> None:
    table = Table(title="conformance results")
    table.add_column("scenario")
    table.add_column("outcome")
    table.add_column("time", justify="right")
    table.add_column("evidence")
    style = {"passed": "green", "failed": "red", "not_applicable": "yellow"}
    for result in results:
        if result.outcome == "not_applicable":
            evidence = result.reason
        else:
            evidence = ", ".join(f"{k}={result.evidence.get(k, 0)}" for k in result.checked)
        table.add_row(
            result.scenario,
            Text(result.outcome, style=style[result.outcome]),
            f"{result.duration:.1f}s",
            evidence,
        )
    console.print(table)
    for result in results:
        if result.passed:
            continue
        console.print(
            f"\nFAILED {result.scenario} on {result.backend} (seed {result.seed})", style="red bold"
        )
        problems = result.violations + result.unmet
        for line in problems[:MAX_LISTED]:
            console.print(f"  - {line}", markup=False)
        if len(problems) > MAX_LISTED:
            console.print(f"  ... and {len(problems) - MAX_LISTED} more (all in result.json)")
        console.print(f"  run directory: {result.run_dir}")
        # Never wrapped: the line must paste into a shell whole.
        console.print(f"  replay: {result.replay}", soft_wrap=True)


__all__ = ["COUNTERS", "main"]
