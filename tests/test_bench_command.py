"""``zart-conformance bench`` as a new user meets it: mistakes said at once and in one line,
nothing measured lost, nothing left behind (processes, schemas, files) however it ends.

The measuring itself is tested in test_bench.py; here every test stops the command early or
stands in for a measurement, except the signal tests, which run a real bench process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.conftest import SCALE
from tests.test_runner_cleanup import alive
from zart_conformance.backends import resolve_descriptor
from zart_conformance.bench import command, report, run
from zart_conformance.bench.command import ALL, bench_command, print_ratios
from zart_conformance.bench.procs import BenchError
from zart_conformance.bench.stats import ratio_rows
from zart_conformance.cli import main

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--tasks", "200", "--idle-seconds", "5", "--pickup-samples", "3", "--repeat", "1"]
NO_SERVERS = {"ZART_POSTGRES_URL": None, "ZART_MYSQL_URL": None}


def invoke(tmp_path: Path, *args: str, env: dict[str, str | None] | None = None) -> Any:
    argv = ["bench", *args]
    if "--json" not in args:
        argv += ["--json", str(tmp_path / "out" / "bench.json")]
    if "--plot" not in args:
        argv += ["--plot", "-"]
    return CliRunner().invoke(main, argv, env={"ZART_RUN_DIR": str(tmp_path), **(env or {})})


def measured_nothing(result: Any) -> bool:
    """No measurement started: every measurement says "<backend>: <what> ..." first."""
    return re.search(r"^\w+: .* \.\.\.$", result.output, re.MULTILINE) is None


# -- 1. an unreachable server ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "env", "url"),
    [
        ("postgres", "ZART_POSTGRES_URL", "postgresql://postgres:secret@127.0.0.1:1/test"),
        ("mysql", "ZART_MYSQL_URL", "mysql://root:secret@127.0.0.1:1/test"),
    ],
)
def test_an_unreachable_server_is_one_line_naming_backend_variable_and_url(
    tmp_path: Path, backend: str, env: str, url: str
) -> None:
    result = invoke(tmp_path, "--backend", backend, *SMALL, env={env: url})
    assert result.exit_code == 3, result.output
    assert isinstance(result.exception, SystemExit)  # said, not a traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    (line,) = lines
    assert line.startswith("zart-conformance bench: error: ")
    assert f"backend {backend}" in line and f"${env}" in line
    assert "@127.0.0.1:1/test" in line and "secret" not in line  # the URL, redacted
    assert "unavailable" in line


async def test_a_failing_cleanup_never_hides_the_error_that_ended_the_block() -> None:
    from zart_conformance.bench.cleanup import cleanup

    done: list[str] = []

    async def drop() -> None:
        done.append("drop")
        raise ConnectionRefusedError("the server is gone too")

    with pytest.raises(LookupError, match="the real error") as caught:
        async with cleanup(drop, lambda: done.append("close")):
            raise LookupError("the real error")
    assert done == ["drop", "close"]  # every step ran, the failing one did not stop the rest
    assert any("the server is gone too" in note for note in caught.value.__notes__)
    # With nothing to hide, a failing step is the error.
    with pytest.raises(ConnectionRefusedError):
        async with cleanup(drop):
            pass


# -- 2. options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tasks", "0"], "--tasks"),
        (["--tasks", "-5"], "--tasks"),
        (["--pickup-samples", "0"], "--pickup-samples"),
        (["--idle-seconds", "0"], "at least 5"),
        (["--idle-seconds", "4.9"], "poll interval"),
        (["--idle-seconds", "nan"], "at least 5"),
        (["--idle-seconds", "inf"], "at least 5"),
    ],
)
def test_out_of_range_options_are_refused_when_the_command_line_is_read(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = invoke(tmp_path, "--backend", "sqlite", *SMALL, *args)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert measured_nothing(result), result.output


def test_every_option_says_what_it_does_and_the_backends_are_named() -> None:
    for param in bench_command.params:
        assert getattr(param, "help", None), f"{param.name} has no help"
    help_text = CliRunner().invoke(main, ["bench", "--help"]).output
    assert all(name in help_text for name in ALL)
    assert {p.stem for p in (ROOT / "backends").glob("*.toml")} == set(ALL)


# -- 3 and 4. output files -----------------------------------------------------------------


def test_a_plot_that_is_not_png_or_svg_is_refused_at_once(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--backend", "sqlite", *SMALL, "--plot", str(tmp_path / "out.txt"))
    assert result.exit_code == 2, result.output
    assert "PNG or SVG" in result.output and measured_nothing(result)


def test_a_plot_without_matplotlib_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert importlib.util.find_spec("matplotlib") is None
    result = invoke(tmp_path, "--backend", "sqlite", *SMALL, "--plot", str(tmp_path / "p.png"))
    assert result.exit_code == 2, result.output
    assert "matplotlib" in result.output and measured_nothing(result)
    assert invoke(tmp_path, "--backend", "nosuch", "--plot", "-").exit_code == 2  # '-' needs none


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_an_output_path_that_cannot_be_written_is_refused_at_once(
    tmp_path: Path, option: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = invoke(tmp_path, "--backend", "sqlite", *SMALL, option, str(a_file / "x.png"))
    assert result.exit_code == 2, result.output
    assert f"{a_file} is not a directory" in result.output and measured_nothing(result)
    a_directory = tmp_path / "a-directory.png"
    a_directory.mkdir()
    result = invoke(tmp_path, "--backend", "sqlite", *SMALL, option, str(a_directory))
    assert result.exit_code == 2 and "is a directory" in result.output


def test_missing_output_directories_are_made_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir" / "bench.json"
    result = invoke(tmp_path, "--backend", "nosuch", "--json", str(out))
    assert result.exit_code == 2 and out.parent.is_dir() and not out.exists()


# -- 5. backends resolved up front, results kept ---------------------------------------------


def test_every_backend_and_server_is_resolved_before_anything_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("zart_conformance.provision.docker_unavailable_reason", lambda: "no")
    args = ["--backend", "sqlite", "--backend", "postgres", "--backend", "nosuch"]
    result = invoke(tmp_path, *args, "--backend", "mysql", *SMALL, env=NO_SERVERS)
    assert result.exit_code == 2, result.output
    # All at once: the unknown name and both missing server variables.
    assert "nosuch" in result.output
    assert "ZART_POSTGRES_URL" in result.output and "ZART_MYSQL_URL" in result.output
    assert measured_nothing(result), result.output


def test_results_of_finished_backends_survive_an_error_in_a_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second SQLite backend under its own name, as a third party would declare one.
    shipped = resolve_descriptor("sqlite").path.read_text()
    late = tmp_path / "sqlite-late.toml"
    late.write_text(re.sub(r"(?m)^name = .*$", 'name = "sqlite-late"', shipped))

    async def measure(db: Any, server_version: str, options: Any, say: Any) -> dict[str, Any]:
        """Stands in for the minutes of measuring; the later backend fails half-way."""
        if db.name == "sqlite-late":
            raise BenchError("a bench process exited with code 1")
        return {"server": server_version, "worker": {"1": {"per_second": 1.0}}}

    monkeypatch.setattr(run, "_backend", measure)
    out = tmp_path / "bench.json"
    result = invoke(tmp_path, "--backend", "sqlite", "--backend", str(late), "--json", str(out))
    assert result.exit_code == 2, result.output
    assert "backend sqlite-late: a bench process exited" in result.output
    assert str(out) in result.output  # where the finished backends' results are
    doc = json.loads(out.read_text())
    assert doc["backends_requested"] == ["sqlite", str(late)]
    assert doc["backends_complete"] == ["sqlite"] == list(doc["backends"])
    assert doc["backends"]["sqlite"]["server"].startswith("SQLite ")


# -- 6 and 7. documentation and defaults -----------------------------------------------------


def test_the_readme_says_how_to_install_and_which_servers_the_bench_needs() -> None:
    readme = (ROOT / "README.md").read_text()
    performance = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    assert 'pip install -e ".[bench]"' in performance
    assert "zart-ref[bench]" not in performance  # not on PyPI
    assert "ZART_POSTGRES_URL" in performance and "ZART_MYSQL_URL" in performance
    assert "SQLite needs none" in performance
    refresh = "nox -s bench -- --suite --json docs/bench/latest.json --plot docs/bench/latest.png"
    assert refresh in performance


def test_the_default_outputs_are_ignored_run_files_not_the_committed_figures() -> None:
    defaults = {p.name: p.default for p in bench_command.params}
    assert defaults["json_path"] == Path(".zart-runs/bench/latest.json")
    assert defaults["plot_path"] == Path(".zart-runs/bench/latest.png")
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "-q", ".zart-runs/bench/latest.json"], check=False
    )
    assert ignored.returncode == 0


def test_nox_bench_passes_its_arguments_and_nothing_else() -> None:
    pytest.importorskip("nox")
    spec = importlib.util.spec_from_file_location("zart_noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    noxfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noxfile)

    class Session:
        posargs = ["--suite", "--json", "docs/bench/latest.json"]
        ran: list[tuple[str, ...]] = []

        def install(self, *args: str) -> None:
            pass

        def run(self, *args: str, **kwargs: Any) -> None:
            self.ran.append(args)

    session = Session()
    noxfile.bench(session)
    assert session.ran == [("zart-conformance", "bench", *Session.posargs)]
    assert "docs/bench" in (noxfile.bench.__doc__ or "")  # how maintainers refresh them


# -- 8. signals ------------------------------------------------------------------------------


def _children(pid: int) -> dict[int, str]:
    """The command lines of ``pid``'s live children, by pid."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and alive(int(entry)):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode()
    return found


def _bench_until_a_ceiling_runs(
    tmp_path: Path, backend: str
) -> tuple[subprocess.Popen[bytes], dict[int, str]]:
    """A real bench process, and every child it had, once its raw-SQL ceiling has started."""
    argv = [sys.executable, "-c", "from zart_conformance.cli import main; main()", "bench"]
    argv += ["--backend", backend, *SMALL, "--plot", "-", "--json", str(tmp_path / "b.json")]
    env = {**os.environ, "ZART_RUN_DIR": str(tmp_path)}
    bench = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 60 * SCALE
    try:
        while not any("bench.ceiling" in line for line in seen.values()):
            assert bench.poll() is None, bench.communicate()[0].decode()
            assert time.monotonic() < deadline, "no ceiling process within 60 s"
            seen.update(_children(bench.pid))
            time.sleep(0.005)  # a poll of /proc, not a wait for a race to settle
    except BaseException:
        bench.kill()
        bench.wait()
        raise
    return bench, seen


def _schemas(children: dict[int, str]) -> set[str]:
    """The namespaces the children worked in: a worker's --schema, a ceiling's spec file."""
    found = set()
    for line in children.values():
        if match := re.search(r"--schema (\S+)", line):
            found.add(match.group(1))
        if match := re.search(r"bench\.ceiling (\S+)", line):
            found.add(pickle.loads(Path(match.group(1)).read_bytes()).schema)
    return found - {None}


def _postgres_schemas(names: set[str]) -> set[str]:
    import asyncio

    import asyncpg

    async def query() -> set[str]:
        conn = await asyncpg.connect(os.environ["ZART_POSTGRES_URL"])
        try:
            rows = await conn.fetch(
                "SELECT schema_name FROM information_schema.schemata"
                " WHERE schema_name = ANY($1::text[])",
                list(names),
            )
        finally:
            await conn.close()
        return {row[0] for row in rows}

    return asyncio.run(query())


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_sigterm_stops_the_bench_like_ctrl_c_leaving_no_process_or_schema(
    tmp_path: Path, backend: str
) -> None:
    if backend == "postgres" and not os.environ.get("ZART_POSTGRES_URL"):
        pytest.skip("needs ZART_POSTGRES_URL")
    bench, children = _bench_until_a_ceiling_runs(tmp_path, backend)
    schemas = _schemas(children)
    if backend == "postgres":
        assert schemas, children  # the ceiling's schema, live when the signal comes
    bench.send_signal(signal.SIGTERM)
    output = bench.communicate(timeout=60 * SCALE)[0].decode()
    assert bench.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM" in output and "Traceback" not in output
    # The bench waited for its children: none is left, not even as a zombie.
    assert {pid: line for pid, line in children.items() if alive(pid)} == {}
    if backend == "postgres":
        assert _postgres_schemas(schemas) == set()
    assert not [p for p in (tmp_path / "bench").rglob("*") if ".db" in p.name]


def test_children_die_with_a_killed_bench(tmp_path: Path) -> None:
    """SIGKILL leaves no clean-up to run: the parent-death signal ends every child."""
    bench, children = _bench_until_a_ceiling_runs(tmp_path, "sqlite")
    bench.kill()
    bench.wait(timeout=30)
    deadline = time.monotonic() + 30 * SCALE
    while living := {pid: line for pid, line in children.items() if alive(pid)}:
        assert time.monotonic() < deadline, f"outlived the bench: {living}"
        time.sleep(0.01)


# -- 9 and 10. what the results say ----------------------------------------------------------


def test_the_commit_is_zarts_own_with_its_local_changes_and_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
        ).stdout

    monkeypatch.chdir(tmp_path)  # not a git checkout: the bench may run from anywhere
    doc = report.document({}, {}, [])
    assert doc["commit"] == git("rev-parse", "--short", "HEAD").strip()
    assert doc["dirty"] in (True, False)
    assert set(doc["versions"]) >= {"zart-ref", "SQLAlchemy", "asyncpg", "aiomysql", "aiosqlite"}
    assert doc["versions"]["SQLAlchemy"] == importlib.metadata.version("SQLAlchemy")
    # Installed from a wheel (no checkout around the package): unknown, not someone else's.
    monkeypatch.setattr(report, "SOURCE", tmp_path)
    assert (report.source()["commit"], report.source()["dirty"]) == (None, None)


def test_dirty_means_the_measured_code_changed_not_the_benchs_own_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    monkeypatch.setattr(report, "SOURCE", clone / "zart_conformance")
    assert report.source()["dirty"] is False
    (clone / "docs" / "bench" / "latest.json").write_text("{}\n")  # the refresh command's output
    assert report.source()["dirty"] is False
    with (clone / "zart_ref" / "worker.py").open("a") as code:
        code.write("# changed\n")
    assert report.source()["dirty"] is True


def test_the_ratio_table_says_met_in_words_with_units_within_80_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    section = {
        "worker": {"1": {"per_second": 8286.0}, "2": {"per_second": 8233.0}},
        "ceiling": {"1": {"per_second": 11178.0}, "2": {"per_second": 14426.0}},
        "peer": {
            "worker": {"1": {"per_second": 4151.0}, "2": {"per_second": 15266.0}},
            "bulk": {"per_second": 37900.0},
            "pickup": {"p50_ms": 2.3, "p95_ms": 3.2},
        },
        "scheduling": {"bulk": {"per_second": 55720.0}},
        "pickup": {"listen": {"p50_ms": 1.2, "p95_ms": 1.8}},
        "idle": {"statements": 7, "poll_intervals": 6.0},
    }
    plain = Console(width=80, no_color=True, highlight=False, markup=False, record=True)
    monkeypatch.setattr(command, "console", plain)
    print_ratios(ratio_rows("postgres", section))
    lines = plain.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("what"))
    assert header.split()[-1] == "met"
    rows = {line.split("  ")[0]: line.split()[-1] for line in lines if "/" in line}
    assert rows["worker / pgqueuer, 2 processes (tasks/s)"] == "NO"
    assert rows["worker / ceiling, 1 process (tasks/s)"] == "yes"
    assert rows["pickup p50 (NOTIFY) / pgqueuer (ms)"] == "yes"
    assert rows["idle statements / poll intervals"] == "NO"
    text = " ".join(" ".join(lines).split())
    assert ">= 0.5" in text and "<= 1" in text  # which way is better
    assert "poll intervals the window holds" in text  # what the idle baseline counts
