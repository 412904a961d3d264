"""``zart-conformance bench``: measure, write the JSON and the plot, print the ratio table."""

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

from .procs import BenchError
from .run import BenchOptions, bench

console = Console(highlight=False, markup=False)
ALL = ("postgres", "mysql", "sqlite")


@click.command("bench")
@click.option(
    "--backend", "backends", multiple=True, help="Shipped backend (repeatable; default: all)."
)
@click.option("--tasks", type=int, default=20_000, show_default=True, help="No-op tasks per run.")
@click.option("--idle-seconds", type=float, default=30.0, show_default=True)
@click.option("--pickup-samples", type=int, default=200, show_default=True)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Runs of each throughput and bulk measurement; the JSON keeps the median and all.",
)
@click.option("--suite", is_flag=True, help="Also time the whole conformance suite (minutes).")
@click.option(
    "--suite-json",
    "suite_files",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Read the suite's time from `zart-conformance run --json` files instead.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=Path("docs/bench/latest.json"),
    show_default=True,
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=Path("docs/bench/latest.png"),
    show_default=True,
    help="PNG or SVG (needs matplotlib: pip install 'zart-ref[bench]'); '-' for none.",
)
def bench_command(
    backends: tuple[str, ...],
    tasks: int,
    idle_seconds: float,
    pickup_samples: int,
    repeat: int,
    suite: bool,
    suite_files: tuple[Path, ...],
    json_path: Path,
    plot_path: Path,
) -> None:
    """Measure the reference worker against the raw-SQL ceiling and pgqueuer, per backend."""
    options = BenchOptions(
        tasks=tasks,
        idle_seconds=idle_seconds,
        pickup_samples=pickup_samples,
        repeat=repeat,
        suite=suite,
        suite_files=list(suite_files),
    )
    try:
        doc = asyncio.run(
            bench(list(backends or ALL), options, lambda line: console.print(line, style="dim"))
        )
    except (ConfigError, BenchError) as exc:
        console.print(f"zart-conformance bench: error: {exc}", style="red")
        sys.exit(2)
    except DatabaseUnavailable as exc:
        console.print(f"zart-conformance bench: error: {exc}", style="red")
        sys.exit(3)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"results: {json_path}")
    if str(plot_path) != "-":
        from .report import plot

        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(doc, plot_path)
        console.print(f"plot: {plot_path}")
    print_ratios(doc["ratios"])


def print_ratios(rows: list[dict[str, object]]) -> None:
    table = Table(title="ratios to the baseline measured in the same run")
    for column in ("backend", "what", "measured", "baseline", "ratio", "target"):
        table.add_column(column, justify="left" if column in ("backend", "what") else "right")
    for row in rows:
        style = "green" if row["met"] else "red"
        table.add_row(
            str(row["backend"]),
            str(row["what"]),
            f"{row['measured']:,.1f}",
            f"{row['baseline']:,.1f}",
            Text(f"{row['ratio']:.2f}", style=style),
            f"{row['target']:g}",
        )
    console.print(table)
