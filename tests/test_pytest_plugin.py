"""The pytest plugin, as a third party meets it: real pytest processes in a directory of their own.

Scenarios run on SQLite (a file per run), so these need no server; each real run is a short
scenario with real worker processes.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from zart_conformance.data import backends_dir, scenarios_dir
from zart_conformance.scenario import load_all

SCENARIOS = load_all(scenarios_dir())
SUITE_IMPORT = "from zart_conformance.suite import *  # noqa: F403\n"


def pytest_in(
    directory: Path, *args: str, expect: int | None = 0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if expect is not None:
        assert result.returncode == expect, result.stdout[-5000:] + result.stderr[-3000:]
    return result


def descriptor(directory: Path, extra: str, *, backend: str = "zart_ref.sql:SQLBackend") -> Path:
    """A copy of the shipped SQLite descriptor with ``extra`` TOML appended."""
    text = (backends_dir() / "sqlite.toml").read_text()
    text = text.replace('name = "sqlite"', 'name = "mine"')
    text = text.replace('backend = "zart_ref.sql:SQLBackend"', f'backend = "{backend}"')
    path = directory / "mine.toml"
    path.write_text(text + extra)
    return path


def project_importing_the_suite(directory: Path) -> Path:
    """A third party's layout: a conftest giving the backend, a module importing the suite."""
    path = descriptor(directory, "")
    (directory / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='session')\n"
        f"def zart_backend():\n    return {str(path)!r}\n"
    )
    (directory / "test_conf.py").write_text(SUITE_IMPORT)
    return path


def collected(output: str) -> list[str]:
    return sorted(re.findall(r"test_zart_scenario\[([a-z0-9-]+)\]", output))


def test_zart_backend_alone_collects_the_whole_suite(tmp_path: Path) -> None:
    out = pytest_in(tmp_path, "--zart-backend", "sqlite", "--collect-only", "-q").stdout
    assert collected(out) == sorted(s.id for s in SCENARIOS)
    assert re.search(r"zart: seed \d+", out) is None  # -q drops the header; see next test


def test_family_marker_selects_exactly_its_scenarios(tmp_path: Path) -> None:
    out = pytest_in(
        tmp_path, "--zart-backend", "sqlite", "--collect-only", "-q", "-m", "zart_durable"
    ).stdout
    assert collected(out) == sorted(s.id for s in SCENARIOS if s.family == "durable")


def test_header_prints_the_seed_to_replay_with(tmp_path: Path) -> None:
    out = pytest_in(tmp_path, "--zart-backend", "sqlite", "--collect-only", "--zart-seed", "99")
    assert "zart: seed 99 (replay a run with --zart-seed 99)" in out.stdout


def test_suite_import_without_a_backend_says_how_to_give_one(tmp_path: Path) -> None:
    (tmp_path / "test_conf.py").write_text(SUITE_IMPORT)
    out = pytest_in(tmp_path, "-k", "retry-backoff", expect=None)
    assert out.returncode != 0
    assert "no backend to test. Pass --zart-backend" in out.stdout + out.stderr
    assert "fixture `zart_backend`" in out.stdout + out.stderr


def test_conftest_backend_runs_and_reports_json_and_junit(tmp_path: Path) -> None:
    path = project_importing_the_suite(tmp_path)
    pytest_in(
        tmp_path,
        "-k",
        "retry-backoff or partition",
        "--zart-seed",
        "4242",
        "--zart-report",
        "rep",
        "--junitxml",
        "junit.xml",
    )
    summary = json.loads((tmp_path / "rep" / "mine.json").read_text())
    assert summary["seed"] == 4242 and summary["backend"]["ref"] == str(path)
    outcomes = {r["scenario"]: r["outcome"] for r in summary["results"]}
    assert outcomes == {"retry-backoff": "passed", "partition": "not_applicable"}
    assert summary["probe"]["server_version"].startswith("SQLite")
    assert summary["versions"]["zart-ref"]
    junit = (tmp_path / "junit.xml").read_text()
    assert '<property name="zart_seed" value="4242"' in junit
    assert '<property name="zart_evidence_retries"' in junit
    assert "<skipped" in junit and "not applicable on mine" in junit


def test_ledger_turns_a_known_failure_into_xfail_and_a_fixed_one_into_a_failure(
    tmp_path: Path,
) -> None:
    ledger = (
        '\n[expected_failures]\n"step-memoization-crash" = "forgets steps: issue 12"\n'
        '"retry-backoff" = "was flaky once"\n'
    )
    path = descriptor(tmp_path, ledger, backend="zart_conformance.mutants:ForgetfulSteps")
    known = pytest_in(tmp_path, "--zart-backend", str(path), "-k", "step-memoization", "-rx")
    assert "1 xfailed" in known.stdout and "forgets steps: issue 12" in known.stdout
    fixed = pytest_in(tmp_path, "--zart-backend", str(path), "-k", "retry-backoff", expect=1)
    assert "passed, but the ledger expects it to fail (was flaky once)" in fixed.stdout
    updated = fixed.stdout.split("updated ledger:", 1)[1]
    assert '"step-memoization-crash" = "forgets steps: issue 12"' in updated
    assert '"retry-backoff"' not in updated


def test_a_failure_prints_a_replay_command_that_reproduces_it(tmp_path: Path) -> None:
    path = descriptor(tmp_path, "", backend="zart_conformance.mutants:ForgetfulSteps")
    out = pytest_in(
        tmp_path,
        "--zart-backend",
        str(path),
        "-k",
        "step-memoization",
        "--zart-seed",
        "31337",
        expect=1,
    ).stdout
    assert "ran again after it completed" in out
    # CI=true makes pytest repeat the whole message in its short summary: same line twice.
    (replay,) = set(re.findall(r"replay: (zart-conformance run .*)", out))
    assert replay == (
        f"zart-conformance run --backend {path} --scenario step-memoization-crash --seed 31337"
    )
    (pytest_replay,) = set(re.findall(r"   or: (pytest .*)", out))
    assert pytest_replay.endswith(f"--zart-backend {path} --zart-seed 31337")
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            "from zart_conformance.cli import main; main()",
            *shlex.split(replay)[1:],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 1 and "ran again after it completed" in again.stdout
    rerun = pytest_in(tmp_path, *shlex.split(pytest_replay)[1:], expect=1)
    assert "1 failed" in rerun.stdout and "(seed 31337)" in rerun.stdout


def test_declared_capability_the_probe_cannot_find_fails_the_run(tmp_path: Path) -> None:
    path = descriptor(tmp_path, "listen_notify = true\n")
    out = pytest_in(tmp_path, "--zart-backend", str(path), expect=pytest.ExitCode.USAGE_ERROR)
    text = out.stdout + out.stderr
    assert "declares listen_notify but the probe found it absent" in text
    assert "listen() returned without subscribing" in text
    assert text.count("probe found it absent") == 1  # once for the session, not per scenario


def test_ledger_entry_naming_no_scenario_is_an_error(tmp_path: Path) -> None:
    path = descriptor(tmp_path, '\n[expected_failures]\nstale-ownr = "typo"\n')
    out = pytest_in(
        tmp_path, "--zart-backend", str(path), "-k", "retry", expect=pytest.ExitCode.USAGE_ERROR
    )
    expected = f"{path}: key 'expected_failures.stale-ownr': no scenario 'stale-ownr'"
    assert expected in out.stdout + out.stderr


def test_backend_option_and_conftest_fixture_may_not_disagree(tmp_path: Path) -> None:
    project_importing_the_suite(tmp_path)
    out = pytest_in(
        tmp_path,
        "test_conf.py",
        "--zart-backend",
        "sqlite",
        "-k",
        "retry",
        expect=pytest.ExitCode.USAGE_ERROR,
    )
    assert "--zart-backend sqlite was given, but the conftest's zart_backend fixture" in (
        out.stdout + out.stderr
    )


@pytest.mark.parametrize("workers", ["2"])
def test_xdist_workers_share_the_seed_and_the_controller_writes_the_summary(
    tmp_path: Path, workers: str
) -> None:
    out = pytest_in(
        tmp_path,
        "--zart-backend",
        "sqlite",
        "-n",
        workers,
        "-k",
        "retry-backoff or event-timeout",
        "--zart-report",
        "rep",
    )
    assert "2 passed" in out.stdout
    summary = json.loads((tmp_path / "rep" / "sqlite.json").read_text())
    assert {r["seed"] for r in summary["results"]} == {summary["seed"]}
    assert {r["scenario"] for r in summary["results"]} == {"retry-backoff", "event-timeout"}
