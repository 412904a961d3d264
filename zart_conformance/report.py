"""Merge JSON summaries of several backends into one Markdown matrix, with a timeline per run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .schema import DataError
from .summary import SUMMARY_VERSION
from .timeline import write_timeline

MARKS = {
    "passed": "✅ passed",
    "failed": "❌ FAILED",
    "not_applicable": "n/a",
    "expected_failure": "⚠️ expected failure",
    "unexpected_pass": "❗ unexpected pass",
}


def load_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON summary ({exc})") from None
    if not isinstance(data, dict) or data.get("summary_version") != SUMMARY_VERSION:
        raise DataError(
            f"{path}: not a zart-conformance summary of version {SUMMARY_VERSION} "
            "(write one with `zart-conformance run --json` or `pytest --zart-report`)"
        )
    return data


def write_report(summaries: Sequence[Path], out: Path) -> Path:
    """Writes ``out/report.md`` and ``out/timelines/<backend>/<scenario>.svg``; returns the first."""
    loaded = [load_summary(p) for p in summaries]
    out.mkdir(parents=True, exist_ok=True)
    backends = [s["backend"]["name"] for s in loaded]
    for index, name in enumerate(backends):
        if name in backends[:index]:
            first = summaries[backends.index(name)]
            raise DataError(
                f"{summaries[index]}: a second summary of backend {name!r} (the first is "
                f"{first}); give one summary per backend"
            )
    scenarios = sorted({r["scenario"] for s in loaded for r in s["results"]})
    cells: dict[tuple[str, str], str] = {}
    notes: list[str] = []
    for data in loaded:
        backend = data["backend"]["name"]
        for result in data["results"]:
            cells[(result["scenario"], backend)] = _cell(result, backend, out)
            notes += _notes(result, backend)
    lines = ["# Conformance report", ""]
    lines += [
        f"- **{s['backend']['name']}**: `{s['backend']['factory']}` on {s['server']}"
        f"{_server_version(s)}; seed {s['seed']}; {s['wall_time']:.0f}s; "
        + ", ".join(f"{n} {o}" for o, n in sorted(s["totals"].items()))
        for s in loaded
    ]
    versions = loaded[0]["versions"] if loaded else {}
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    lines += ["| scenario | " + " | ".join(backends) + " |"]
    lines += ["|---|" + "---|" * len(backends)]
    for scenario in scenarios:
        row = [cells.get((scenario, b), "not run") for b in backends]
        lines.append(f"| {scenario} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Each cell links the run's timeline: one lane per worker, a bar per task held "
        "(coloured by how it ended), fault windows shaded, lease losses marked x.",
        "",
    ]
    if notes:
        lines += ["## Details", "", *notes, ""]
    lines += [
        "## Evidence",
        "",
        "What each run proved its faults did (the counters it bounds).",
        "",
    ]
    lines += ["| scenario | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    evidence = {
        (r["scenario"], s["backend"]["name"]): ", ".join(
            f"{k}={r['evidence'].get(k, 0)}" for k in r["checked"]
        )
        for s in loaded
        for r in s["results"]
    }
    for scenario in scenarios:
        row = [evidence.get((scenario, b)) or "-" for b in backends]
        lines.append(f"| {scenario} | " + " | ".join(row) + " |")
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _server_version(data: dict[str, Any]) -> str:
    probe = data.get("probe") or {}
    return f" ({probe['server_version']})" if probe.get("server_version") else ""


def _cell(result: dict[str, Any], backend: str, out: Path) -> str:
    mark = MARKS.get(result["outcome"], str(result["outcome"]))
    if result["outcome"] == "not_applicable":
        return mark
    text = f"{mark} {result['duration']:.1f}s"
    run_dir = Path(result["run_dir"]) if result.get("run_dir") else None
    if run_dir is None or not (run_dir / "events").is_dir():
        return text + " (no events on disk)"
    svg = out / "timelines" / backend / f"{result['scenario']}.svg"
    title = f"{result['scenario']} on {backend}: {result['outcome']} (seed {result['seed']})"
    write_timeline(run_dir, svg, title)
    return f"[{text}]({svg.relative_to(out).as_posix()})"


def _notes(result: dict[str, Any], backend: str) -> list[str]:
    head = f"- **{result['scenario']}** on {backend}"
    if result["outcome"] == "not_applicable":
        return [f"{head}: not applicable: {result['reason']}"]
    if result["outcome"] == "passed":
        return []
    lines = [f"{head}: {result['outcome']}" + (f": {result['reason']}" if result["reason"] else "")]
    lines += [f"  - {v}" for v in (result["violations"] + result["unmet"])[:10]]
    lines.append(f"  - replay: `{result['replay']}`")
    return lines
