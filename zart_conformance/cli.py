"""``zart-conformance``: run the scenario suite against a backend and print what it proved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from zart_ref.errors import ConfigError, DatabaseUnavailable

from .backends import resolve_descriptor
from .bench.command import bench_command
from .checker import COUNTERS
from .data import scenarios_dir
from .ledger import updated_ledger
from .matrix import merge as merge_matrix
from .matrix import mutation_matrix
from .matrix import problems as matrix_problems
from .matrix import render as render_matrix
from .report import write_report
from .runner import RunOptions, ScenarioResult
from .scenario import load_all
from .suite_runner import new_seed, run_suite
from .summary import backend_info, summary
from .timeline import write_timeline

# Markup off: messages carry user text ([sequential], [containers]) that is not markup.
console = Console(stderr=False, highlight=False, markup=False)
MAX_LISTED = 12
OUTCOME_STYLE = {
    "passed": "green",
    "failed": "red",
    "not_applicable": "yellow",
    "expected_failure": "yellow",
    "unexpected_pass": "red",
}


@contextlib.contextmanager
def kit_errors() -> Iterator[None]:
    """The kit's own errors as one red line and a distinct exit code (2 usage, 3 database)."""
    try:
        yield
    except ConfigError as exc:
        console.print(f"zart-conformance: error: {exc}", style="red")
        sys.exit(2)
    except DatabaseUnavailable as exc:
        console.print(f"zart-conformance: error: {exc}", style="red")
        sys.exit(3)


@click.group()
def main() -> None:
    """The Zart conformance kit."""


@main.command("list")
def list_scenarios() -> None:
    """List the shipped scenarios with their clauses and requirements."""
    with kit_errors():
        scenarios = load_all(scenarios_dir())
    for scenario in scenarios:
        needs = ", ".join(scenario.requires) or "-"
        console.print(
            f"{scenario.id}  [{scenario.family}]  {scenario.title}  "
            f"(clauses {', '.join(scenario.clauses)}; needs {needs})"
        )


@main.command()
@click.option(
    "--backend",
    required=True,
    help="Shipped name (postgres, mysql, sqlite), descriptor .toml, module:attr, or a name "
    "registered under the zart_conformance.backends entry points.",
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
    began = time.monotonic()
    with kit_errors():
        descriptor = resolve_descriptor(backend)
        if factory:
            descriptor = descriptor.with_factory(factory)
        console.print(
            f"zart-conformance: backend {descriptor.name} ({descriptor.factory}), seed {seed}"
        )
        options = RunOptions(
            seed=seed, keep=keep, progress=lambda text: console.print(f"  {text}", style="dim")
        )
        suite, results = asyncio.run(run_suite(descriptor, scenario_ids, options))
    console.print(f"server: {suite.server.how} ({suite.probe.server_version})")
    for cap in suite.probe.undeclared(descriptor.capabilities):
        console.print(f"note: the probe found {cap}, which the descriptor does not declare")
    print_results(results)
    if any(r.outcome == "unexpected_pass" for r in results):
        console.print("\nThe ledger is out of date. Updated ledger:", style="yellow")
        console.print(updated_ledger(descriptor.expected_failures, results), soft_wrap=True)
    if json_path:
        data = summary(
            backend_info(descriptor),
            seed=seed,
            server=suite.server.how,
            probe=suite.probe.to_json(),
            results=[r.to_json() for r in results],
            wall_time=time.monotonic() - began,
        )
        json_path.write_text(json.dumps(data, indent=2))
    if not all(r.passed for r in results):
        sys.exit(1)


@main.command()
@click.argument("summaries", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path(".zart-runs/report"),
    show_default=True,
    help="Directory for report.md and timelines/.",
)
def report(summaries: tuple[Path, ...], out: Path) -> None:
    """Merge JSON summaries (run --json, pytest --zart-report) into a Markdown matrix."""
    with kit_errors():
        path = write_report(summaries, out)
    console.print(f"report: {path}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None, help="SVG path.")
def timeline(run_dir: Path, out: Path | None) -> None:
    """Draw one run's timeline (the run directory a failure prints) as SVG."""
    if not (run_dir / "events").is_dir():
        console.print(f"zart-conformance: error: {run_dir} has no events/ directory", style="red")
        sys.exit(2)
    title = run_dir.name
    if (run_dir / "result.json").is_file():
        result = json.loads((run_dir / "result.json").read_text())
        title = f"{result['scenario']} on {result['backend']}: {result['outcome']} (seed {result['seed']})"
    path = write_timeline(run_dir, out or run_dir / "timeline.svg", title)
    console.print(f"timeline: {path}")


@main.command("mutation-matrix")
@click.option("--backend", default="postgres", show_default=True, help="Backend to mutate.")
@click.option("--seed", type=int, default=None, help="Replay a matrix with this seed.")
@click.option("--jobs", type=click.IntRange(1, 8), default=2, show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("docs"),
    show_default=True,
    help="Directory for mutation-matrix.md and mutation-matrix.json.",
)
@click.option(
    "--rerender",
    is_flag=True,
    help="Run nothing: re-read the scenarios' without_mutant reasons into the existing files.",
)
@click.option(
    "--mutant",
    "only",
    multiple=True,
    help="Run only this mutant's row (and the reference) and merge it into the existing files.",
)
def mutation_matrix_command(
    backend: str, seed: int | None, jobs: int, out: Path, rerender: bool, only: tuple[str, ...]
) -> None:
    """Run every mutant against every scenario (and the reference as control)."""
    seed = seed if seed is not None else new_seed()
    if rerender:
        with kit_errors():
            matrix = json.loads((out / "mutation-matrix.json").read_text())
            matrix["without_mutant"] = {s.id: s.without_mutant for s in load_all(scenarios_dir())}
        _write_matrix(matrix, out)
        return
    console.print(f"zart-conformance: mutation matrix on {backend}, seed {seed}")
    with kit_errors():
        descriptor = resolve_descriptor(backend)
        options = RunOptions(seed=seed)
        matrix = asyncio.run(
            mutation_matrix(
                descriptor,
                options,
                jobs=jobs,
                only=only,
                progress=lambda t: console.print(f"  {t}", style="dim"),
            )
        )
        if only:
            matrix = merge_matrix(json.loads((out / "mutation-matrix.json").read_text()), matrix)
    _write_matrix(matrix, out)


def _write_matrix(matrix: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation-matrix.json").write_text(json.dumps(matrix, indent=2) + "\n")
    (out / "mutation-matrix.md").write_text(render_matrix(matrix))
    console.print(f"matrix: {out / 'mutation-matrix.md'}")
    for problem in matrix_problems(matrix):
        console.print(f"  - {problem}", style="red")
    if matrix_problems(matrix):
        sys.exit(1)


def print_results(results: list[ScenarioResult]) -> None:
    table = Table(title="conformance results")
    table.add_column("scenario")
    table.add_column("outcome")
    table.add_column("time", justify="right")
    table.add_column("evidence")
    for result in results:
        if result.reason:
            evidence = result.reason
        else:
            evidence = ", ".join(f"{k}={result.evidence.get(k, 0)}" for k in result.checked)
        table.add_row(
            result.scenario,
            Text(result.outcome, style=OUTCOME_STYLE[result.outcome]),
            f"{result.duration:.1f}s",
            evidence,
        )
    console.print(table)
    for result in results:
        if result.passed:
            continue
        console.print(
            f"\n{result.outcome.upper()} {result.scenario} on {result.backend} (seed {result.seed})",
            style="red bold",
        )
        problems = [result.reason] if result.reason else []
        problems += result.violations + result.unmet
        for line in problems[:MAX_LISTED]:
            console.print(f"  - {line}", markup=False)
        if len(problems) > MAX_LISTED:
            console.print(f"  ... and {len(problems) - MAX_LISTED} more (all in result.json)")
        console.print(f"  run directory: {result.run_dir}")
        # Never wrapped: the line must paste into a shell whole.
        console.print(f"  replay: {result.replay}", soft_wrap=True)


main.add_command(bench_command)

__all__ = ["COUNTERS", "main"]
