"""``zart-conformance bench``: measure, write the JSON and the plot, print the ratio table."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from zart_ref.errors import ConfigError, DatabaseUnavailable

from . import INSTALL_BENCH
from .idle import IDLE_POLL_INTERVAL
from .procs import BenchError
from .run import BenchOptions, bench

console = Console(highlight=False, markup=False)
ALL = ("postgres", "mysql", "sqlite")
MIN_TASKS = 100
PLOT_FORMATS = (".png", ".svg")
T = TypeVar("T")


def _writable(path: Path) -> Path:
    """``path``, once its directory exists (made if need be) and takes a new file: checked
    when the command line is read, not after minutes of measuring."""
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if existing != path and not existing.is_dir():
        raise click.BadParameter(f"cannot write {path}: {existing} is not a directory")
    if path.is_dir():
        raise click.BadParameter(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}."):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _json_path(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    return _writable(value)


def _plot_path(ctx: click.Context, param: click.Parameter, value: Path) -> Path | None:
    if str(value) == "-":
        return None
    if value.suffix.lower() not in PLOT_FORMATS:
        raise click.BadParameter(
            f"{value}: a plot is written as PNG or SVG; name a .png or .svg file, or '-' for none"
        )
    _writable(value)
    if importlib.util.find_spec("matplotlib") is None:
        raise click.BadParameter(
            f"a plot needs matplotlib, which is not installed ({INSTALL_BENCH}); '-' for none"
        )
    return value


def _idle_seconds(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not (math.isfinite(value) and value >= IDLE_POLL_INTERVAL):
        raise click.BadParameter(
            f"{value:g}: must be at least {IDLE_POLL_INTERVAL:g} (seconds), the idle worker's poll "
            "interval: a shorter window may hold no poll at all and measure nothing"
        )
    return value


@click.command("bench")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help=f"Backend to measure, repeatable; default: all shipped ({', '.join(ALL)}). "
    "PostgreSQL and MySQL take their server from ZART_POSTGRES_URL and ZART_MYSQL_URL. "
    "A descriptor .toml path or a registered name works too.",
)
@click.option(
    "--tasks",
    type=click.IntRange(min=MIN_TASKS),
    default=20_000,
    show_default=True,
    help=f"No-op tasks per throughput and bulk-scheduling run (at least {MIN_TASKS}: fewer "
    "time process start-up, not the queue).",
)
@click.option(
    "--idle-seconds",
    type=float,
    default=30.0,
    show_default=True,
    callback=_idle_seconds,
    help="How long the idle worker's statements are counted (at least its poll interval, "
    f"{IDLE_POLL_INTERVAL:g} s).",
)
@click.option(
    "--pickup-samples",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Pickup latency samples with LISTEN/NOTIFY (and pgqueuer's); polling takes half as "
    "many, rounded up.",
)
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
    default=Path(".zart-runs/bench/latest.json"),
    show_default=True,
    callback=_json_path,
    help="Where the results go, rewritten after each finished backend (docs/bench/latest.json "
    "is the committed copy, refreshed by maintainers).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=Path(".zart-runs/bench/latest.png"),
    show_default=True,
    callback=_plot_path,
    help=f"PNG or SVG (needs matplotlib: {INSTALL_BENCH}); '-' for none.",
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
    plot_path: Path | None,
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
    complete: list[str] = []

    def save(doc: dict[str, Any]) -> None:
        """Write the results so far, replacing the file whole (never half written)."""
        partial = json_path.with_name(f".{json_path.name}.partial")
        partial.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(partial, json_path)
        complete[:] = doc["backends_complete"]

    def fail(message: object, code: int) -> NoReturn:
        # Not folded at 80 columns: an error is one line per problem, also in a log.
        console.print(f"zart-conformance bench: error: {message}", style="red", soft_wrap=True)
        if complete:
            done = ", ".join(complete)
            console.print(f"results of the complete backends ({done}): {json_path}", soft_wrap=True)
        sys.exit(code)

    try:
        doc = asyncio.run(
            stoppable(
                bench(
                    list(backends or ALL),
                    options,
                    lambda line: console.print(line, style="dim"),
                    save,
                )
            )
        )
    except (ConfigError, BenchError) as exc:
        fail(exc, 2)
    except DatabaseUnavailable as exc:
        fail(exc, 3)
    except Stopped as exc:
        fail(exc, 128 + exc.signum)
    except KeyboardInterrupt:
        fail("interrupted (SIGINT)", 128 + signal.SIGINT)
    console.print(f"results: {json_path}")
    if plot_path is not None:
        from .report import plot

        plot(doc, plot_path)
        console.print(f"plot: {plot_path}")
    print_ratios(doc["ratios"])


class Stopped(Exception):
    """The bench was asked to stop by a signal; what was running has been cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


async def stoppable(work: Awaitable[T]) -> T:
    """``work``, ended by SIGTERM as asyncio.run ends it on Ctrl-C: cancelled where it waits,
    so every clean-up runs (processes stopped, schemas dropped, files removed). A second
    SIGTERM during the clean-up is ignored."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop() -> None:
        if not received:
            received.append(signal.SIGTERM)
            task.cancel()

    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        return await work
    except asyncio.CancelledError:
        if received:
            raise Stopped(received[0]) from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _amount(value: float, unit: str) -> str:
    """A measured or baseline value, as precise as its unit needs."""
    if unit == "ms":
        return f"{value:.2f}"
    if unit == "tasks/s":
        return f"{value:,.0f}"
    return f"{value:g}"


def print_ratios(rows: list[dict[str, Any]]) -> None:
    """The ratio table, one section per backend, within 80 columns; whether a target is met
    is said in words too (logs have no colour)."""
    table = Table(
        title="ratios to the baseline measured in the same run",
        caption="target >=: higher is better; <=: lower is better. idle: measured = the "
        "statements one idle worker sent in the window, baseline = the poll intervals the "
        "window holds.",
        box=None,
        pad_edge=False,
    )
    for column in ("what", "measured", "baseline", "ratio", "target", "met"):
        table.add_column(column, justify="left" if column == "what" else "right")
    backend = None
    for row in rows:
        if row["backend"] != backend:
            backend = row["backend"]
            table.add_row(Text(f"backend {backend}", style="bold"))
        style = "green" if row["met"] else "red"
        unit, baseline_unit = row["unit"], row["baseline_unit"]
        what = row["what"] + (f" ({unit})" if unit == baseline_unit else "")
        table.add_row(
            what,
            _amount(row["measured"], unit),
            _amount(row["baseline"], baseline_unit),
            Text(f"{row['ratio']:.2f}", style=style),
            f"{'>=' if row['better'] == 'higher is better' else '<='} {row['target']:g}",
            Text("yes" if row["met"] else "NO", style=style),
        )
    console.print(table)
