"""Sessions: ``tests``, ``lint``, ``conformance-<backend>``.

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
    session.run("pytest", *(session.posargs or ["-q", "-ra"]))


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


for _backend in BACKENDS:
    _conformance(_backend)


if __name__ == "__main__":
    nox.main()
