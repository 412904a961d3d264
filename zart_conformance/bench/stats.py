"""Pure arithmetic of the bench: percentiles, latency summaries and the ratio table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the two nearest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """p50, p95, max and mean in milliseconds, and how many samples."""
    ms = [s * 1000 for s in seconds]
    return {
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


def median_run(
    runs: Sequence[dict[str, Any]], key: str = "per_second", *, interleaved: bool = False
) -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower one of an even count), with every run's
    ``key`` beside it and a ``statistic`` saying so: one quiet or one disturbed run does not
    decide a ratio. ``interleaved``: the runs alternated with the baseline's runs."""
    if not runs:
        raise ValueError("median of no runs")
    ordered = sorted(runs, key=lambda run: float(run[key]))
    count = len(runs)
    kind = " interleaved" if interleaved else ""
    if count == 1:
        statistic = f"one{kind} run"
    else:
        statistic = f"{'lower ' if count % 2 == 0 else ''}median of {count}{kind} runs"
    return {
        **ordered[(count - 1) // 2],
        "runs": [run[key] for run in runs],
        "statistic": statistic,
    }


def _get(doc: dict[str, Any], path: str) -> float | None:
    node: Any = doc
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


class Ratio(NamedTuple):
    """measured / baseline, both read from a backend's section; ``higher``: higher is better,
    so the target is met when the ratio is >= it (else when it is <= it)."""

    what: str
    measured: str
    baseline: str
    target: float
    higher: bool
    unit: str
    baseline_unit: str = ""


def _rate(what: str, measured: str, baseline: str, target: float) -> Ratio:
    """Tasks per second on both sides: higher is better."""
    return Ratio(what, f"{measured}.per_second", f"{baseline}.per_second", target, True, "tasks/s")


def _latency(what: str, measured: str, baseline: str) -> Ratio:
    """Milliseconds on both sides: lower is better, at most the baseline's."""
    return Ratio(what, measured, baseline, 1.0, False, "ms")


RATIOS: list[Ratio] = [
    _rate("worker / ceiling, 1 process", "worker.1", "ceiling.1", 0.5),
    _rate("worker / ceiling, 2 processes", "worker.2", "ceiling.2", 0.5),
    _rate("worker / pgqueuer, 1 process", "worker.1", "peer.worker.1", 1.0),
    _rate("worker / pgqueuer, 2 processes", "worker.2", "peer.worker.2", 1.0),
    _rate("bulk schedule / pgqueuer", "scheduling.bulk", "peer.bulk", 1.0),
    _latency("pickup p50 (NOTIFY) / pgqueuer", "pickup.listen.p50_ms", "peer.pickup.p50_ms"),
    _latency("pickup p95 (NOTIFY) / pgqueuer", "pickup.listen.p95_ms", "peer.pickup.p95_ms"),
    # At most one statement per poll interval (an idle worker holds no task to heartbeat):
    # the statements sent in the window against how many poll intervals the window holds.
    Ratio(
        "idle statements / poll intervals",
        "idle.statements",
        "idle.poll_intervals",
        1.0,
        False,
        "statements",
        "poll intervals",
    ),
]


def ratio_rows(backend: str, section: dict[str, Any]) -> list[dict[str, Any]]:
    """The ratios of one backend's section that both sides were measured for."""
    rows = []
    for ratio_def in RATIOS:
        measured = _get(section, ratio_def.measured)
        baseline = _get(section, ratio_def.baseline)
        if measured is None or not baseline:
            continue
        ratio = measured / baseline
        higher = ratio_def.higher
        rows.append(
            {
                "backend": backend,
                "what": ratio_def.what,
                "measured": measured,
                "baseline": baseline,
                "unit": ratio_def.unit,
                "baseline_unit": ratio_def.baseline_unit or ratio_def.unit,
                "ratio": round(ratio, 3),
                "target": ratio_def.target,
                "better": "higher is better" if higher else "lower is better",
                "met": ratio >= ratio_def.target if higher else ratio <= ratio_def.target,
            }
        )
    return rows
