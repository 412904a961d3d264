"""The JSON summary of one backend's run: enough to reproduce it, judge it and compare it."""

from __future__ import annotations

import platform
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .backends import Descriptor
from .runner import PASSING

SUMMARY_VERSION = 1
_PACKAGES = ("zart-ref", "sqlalchemy", "asyncpg", "aiomysql", "aiosqlite", "pytest")


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def backend_info(descriptor: Descriptor) -> dict[str, Any]:
    return {
        "name": descriptor.name,
        "ref": descriptor.ref,
        "factory": descriptor.factory,
        "dialect": descriptor.dialect,
        "capabilities": sorted(descriptor.capabilities),
        "expected_failures": descriptor.expected_failures,
    }


def summary(
    backend: dict[str, Any],
    *,
    seed: int,
    server: str,
    probe: dict[str, Any] | None,
    results: Sequence[dict[str, Any]],
    wall_time: float,
) -> dict[str, Any]:
    """``backend`` from :func:`backend_info`; results as ScenarioResult.to_json() gives them."""
    ordered = sorted(results, key=lambda r: r["scenario"])
    return {
        "summary_version": SUMMARY_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "versions": versions(),
        "backend": backend,
        "server": server,
        "probe": probe,
        "wall_time": round(wall_time, 3),
        "totals": dict(Counter(r["outcome"] for r in ordered)),
        "passed": all(r["outcome"] in PASSING for r in ordered),
        "results": ordered,
    }
