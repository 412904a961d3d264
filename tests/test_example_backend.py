"""The example out-of-tree backend passes the suite from installed wheels in a fresh venv.

Nothing comes from this checkout at run time: zart-ref is built into a wheel, the example is
installed from its own pyproject, and pytest runs in a directory holding only the example's
tests. The import path ``from zart_conformance.suite import *`` and the entry points
(``pytest11``, ``zart_conformance.backends``) are what a third party gets from PyPI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "thirdparty_backend"


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Nothing may leak in from this process's environment: a fresh venv sees only itself.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env
    )
    assert result.returncode == 0, (
        f"{args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with zart-ref's wheel and the example installed, nothing else."""
    root = tmp_path_factory.mktemp("example")
    wheels = root / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT, cwd=root)
    (wheel,) = wheels.glob("zart_ref-*.whl")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    source = root / "example-src"  # a copy, so the build leaves the checkout alone
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", ".zart-runs"))
    run(
        python,
        "-m",
        "pip",
        "install",
        "-q",
        "--find-links",
        wheels,
        f"{wheel}[conformance]",
        f"{source}[test]",
        cwd=root,
    )
    return python


def test_installed_kit_and_example_come_from_the_venv(fresh_venv: Path, tmp_path: Path) -> None:
    probe = "import zart_conformance, zart_example_backend; print(zart_conformance.__file__); print(zart_example_backend.__file__)"
    out = run(fresh_venv, "-c", probe, cwd=tmp_path).stdout.split()
    venv_root = fresh_venv.parent.parent
    assert all(Path(p).is_relative_to(venv_root) for p in out), out


def test_registered_backend_is_found_by_its_entry_point_name(
    fresh_venv: Path, tmp_path: Path
) -> None:
    out = run(
        fresh_venv,
        "-m",
        "pytest",
        "--zart-backend",
        "example-sqlite",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        cwd=tmp_path,
    ).stdout
    scenarios = sorted(p.stem for p in (ROOT / "scenarios").glob("*.toml"))
    assert [f"test_zart_scenario[{s}]" in out for s in scenarios] == [True] * len(scenarios)


def test_example_backend_passes_the_suite_from_installed_wheels(
    fresh_venv: Path, tmp_path: Path
) -> None:
    shutil.copytree(EXAMPLE / "tests", tmp_path / "tests")
    run(
        fresh_venv,
        "-m",
        "pytest",
        "tests",
        "-n",
        "2",
        "-p",
        "no:cacheprovider",
        "--junitxml",
        "junit.xml",
        "--zart-report",
        "report",
        cwd=tmp_path,
    )
    summary = json.loads((tmp_path / "report" / "example-sqlite.json").read_text())
    assert summary["backend"]["factory"] == "zart_example_backend:TimedBackend"
    outcomes = {r["scenario"]: r["outcome"] for r in summary["results"]}
    assert len(outcomes) == len(list((ROOT / "scenarios").glob("*.toml")))
    assert set(outcomes.values()) == {"passed", "not_applicable"}, outcomes
    # Scenarios SQLite cannot host are skipped with their reason, not silently passed.
    junit = (tmp_path / "junit.xml").read_text()
    assert junit.count("<skipped") == list(outcomes.values()).count("not_applicable")
