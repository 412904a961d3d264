"""Sessions: ``tests``, ``lint``, ``conformance-<backend>``, ``conformance-report``, ``bench``,
``mutation-matrix``.

With nox installed: ``nox -s tests``. On a machine with only Python 3.11+:
``python3 noxfile.py -s tests`` makes a private virtual environment with nox and runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _bootstrap() -> None:
    """Install nox into .nox/_bootstrap and re-run this file with it."""
    venv = ROOT / ".nox" / "_bootstrap"
    python = venv / "bin" / "python"
    if not python.exists():
        print("noxfile: installing nox into .nox/_bootstrap (first run only)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nox>=2024.4"], check=True)
    os.execv(python, [str(python), __file__, *sys.argv[1:]])


try:
    import nox
except ModuleNotFoundError:
    if __name__ != "__main__":
        raise
    _bootstrap()

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
BACKENDS = ("postgres", "mysql", "sqlite")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, conformance runs and mutants included."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q", "-ra", "--durations=15"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


def _conformance(backend: str) -> None:
    def session_fn(session: nox.Session) -> None:
        session.install("-e", ".[conformance]")
        report = ROOT / ".zart-runs" / f"conformance-{backend}.json"
        report.parent.mkdir(exist_ok=True)
        session.run(
            "zart-conformance", "run", "--backend", backend, "--json", str(report), *session.posargs
        )

    session_fn.__doc__ = f"Run the conformance suite against the {backend} backend."
    nox.session(name=f"conformance-{backend}")(session_fn)


@nox.session
def bench(session: nox.Session) -> None:
    """Measure the worker against the raw-SQL ceiling and pgqueuer: .zart-runs/bench/latest.*.

    Not run by default (minutes, and numbers only mean something on a quiet machine).
    Arguments after ``--`` go to ``zart-conformance bench``: ``nox -s bench -- --suite`` also
    times the conformance suite per backend. PostgreSQL and MySQL need ZART_POSTGRES_URL and
    ZART_MYSQL_URL. Maintainers refresh the committed figures, on a quiet machine, with
    ``nox -s bench -- --suite --json docs/bench/latest.json --plot docs/bench/latest.png``.
    """
    session.install("-e", ".[bench]")
    session.run("zart-conformance", "bench", *session.posargs)


for _backend in BACKENDS:
    _conformance(_backend)


@nox.session(name="conformance-report")
def conformance_report(session: nox.Session) -> None:
    """All three reference backends, merged into .zart-runs/report/report.md with timelines."""
    session.install("-e", ".[conformance]")
    runs = ROOT / ".zart-runs"
    runs.mkdir(exist_ok=True)
    summaries = []
    for backend in BACKENDS:
        summary = runs / f"conformance-{backend}.json"
        summaries.append(str(summary))
        # A failing backend still belongs in the report: exit 1 is a result, not an error.
        session.run(
            "zart-conformance",
            "run",
            "--backend",
            backend,
            "--json",
            str(summary),
            *session.posargs,
            success_codes=[0, 1],
        )
    session.run("zart-conformance", "report", *summaries, "--out", str(runs / "report"))


@nox.session(name="mutation-matrix")
def mutation_matrix(session: nox.Session) -> None:
    """Every mutant against every scenario on PostgreSQL, into docs/mutation-matrix.md."""
    session.install("-e", ".[conformance]")
    session.run(
        "zart-conformance",
        "mutation-matrix",
        "--backend",
        "postgres",
        "--out",
        str(ROOT / "docs"),
        *session.posargs,
    )


if __name__ == "__main__":
    nox.main()
