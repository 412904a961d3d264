"""Pure arithmetic of the bench: percentiles, latency summaries and the ratio table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


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


def median_run(runs: Sequence[dict[str, Any]], key: str = "per_second") -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower one of an even count), with every run's
    ``key`` beside it: one quiet or one disturbed run does not decide a ratio."""
    if not runs:
        raise ValueError("median of no runs")
    ordered = sorted(runs, key=lambda run: float(run[key]))
    return {**ordered[(len(ordered) - 1) // 2], "runs": [run[key] for run in runs]}


def _get(doc: dict[str, Any], path: str) -> float | None:
    node: Any = doc
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


# (what, measured path, baseline path, target, higher_is_better). The ratio is always
# measured / baseline; a target is met when the ratio is >= it (or <= it, lower is better).
RATIOS: list[tuple[str, str, str, float, bool]] = [
    ("worker / ceiling, 1 process", "worker.1.per_second", "ceiling.1.per_second", 0.5, True),
    ("worker / ceiling, 2 processes", "worker.2.per_second", "ceiling.2.per_second", 0.5, True),
    ("worker / pgqueuer, 1 process", "worker.1.per_second", "peer.worker.1.per_second", 1.0, True),
    (
        "worker / pgqueuer, 2 processes",
        "worker.2.per_second",
        "peer.worker.2.per_second",
        1.0,
        True,
    ),
    (
        "bulk schedule / pgqueuer enqueue",
        "scheduling.bulk.per_second",
        "peer.bulk.per_second",
        1.0,
        True,
    ),
    ("pickup p50 (NOTIFY) / pgqueuer", "pickup.listen.p50_ms", "peer.pickup.p50_ms", 1.0, False),
    ("pickup p95 (NOTIFY) / pgqueuer", "pickup.listen.p95_ms", "peer.pickup.p95_ms", 1.0, False),
    # At most one statement per poll interval (an idle worker holds no task to heartbeat).
    ("idle statements / poll intervals", "idle.statements", "idle.poll_intervals", 1.0, False),
]


def ratio_rows(backend: str, section: dict[str, Any]) -> list[dict[str, Any]]:
    """The ratios of one backend's section that both sides were measured for."""
    rows = []
    for what, measured_path, baseline_path, target, higher in RATIOS:
        measured, baseline = _get(section, measured_path), _get(section, baseline_path)
        if measured is None or not baseline:
            continue
        ratio = measured / baseline
        rows.append(
            {
                "backend": backend,
                "what": what,
                "measured": measured,
                "baseline": baseline,
                "ratio": round(ratio, 3),
                "target": target,
                "met": ratio >= target if higher else ratio <= target,
            }
        )
    return rows
