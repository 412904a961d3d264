"""The bench's results: the JSON document (with the machine it ran on) and its plot."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .stats import ratio_rows

SECTIONS = ("worker", "ceiling", "peer", "scheduling", "pickup", "idle", "suite")


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU model and count, memory, Python, OS."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    memory = 0.0
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# zart's own source: the commit is the one of the code measured, wherever the bench runs from.
SOURCE = Path(__file__).resolve().parent.parent
MEASURED = tuple(f":(top){path}" for path in ("zart_ref", "zart_conformance", "pyproject.toml"))
VERSIONED = ("zart-ref", "SQLAlchemy", "asyncpg", "aiomysql", "aiosqlite", "pgqueuer")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(SOURCE), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def source() -> dict[str, Any]:
    """The commit of zart's source and whether its code differs from it ("dirty"); both
    None when the package is not a file of a git checkout (an installed wheel)."""
    if _git("ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return {"commit": None, "dirty": None}
    # The measured code only: the bench's own output may be a tracked file (docs/bench).
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *MEASURED)
    return {
        "commit": (_git("rev-parse", "--short", "HEAD") or "").strip() or None,
        "dirty": None if status is None else bool(status.strip()),
    }


def versions() -> dict[str, str | None]:
    """The installed versions of what is measured and what it runs on (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def document(
    backends: dict[str, dict[str, Any]], settings: dict[str, Any], requested: list[str]
) -> dict[str, Any]:
    """The results so far: written after every backend, so ``backends_complete`` (in the
    order measured) may be fewer than ``backends_requested``."""
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **source(),
        "versions": versions(),
        "machine": machine(),
        "settings": settings,
        "backends_requested": requested,
        "backends_complete": list(backends),
        "backends": backends,
        "ratios": [row for name, section in backends.items() for row in ratio_rows(name, section)],
    }


def plot(doc: dict[str, Any], path: Path) -> None:
    """Throughput side by side, the ratios against their targets, and pickup latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = doc["backends"]
    fig, (rates, ratios, pickup) = plt.subplots(1, 3, figsize=(17, 5.5))
    series = [
        ("zart worker, 1 proc", ("worker", "1")),
        ("zart worker, 2 procs", ("worker", "2")),
        ("raw-SQL ceiling, 1 proc", ("ceiling", "1")),
        ("raw-SQL ceiling, 2 procs", ("ceiling", "2")),
        ("pgqueuer, 1 proc", ("peer", "worker", "1")),
        ("pgqueuer, 2 procs", ("peer", "worker", "2")),
    ]
    names = list(backends)
    width = 0.8 / len(series)
    for index, (label, keys) in enumerate(series):
        values = [_dig(backends[name], *keys, "per_second") or 0 for name in names]
        offsets = [i + (index - len(series) / 2 + 0.5) * width for i in range(len(names))]
        rates.bar(offsets, values, width, label=label)
    rates.set_xticks(range(len(names)), names)
    rates.set_ylabel("no-op tasks per second")
    rates.set_title(f"Throughput ({doc['settings'].get('tasks')} tasks)")
    rates.legend(fontsize=7)

    rows = doc["ratios"]
    labels = [f"{row['backend']}: {row['what']}" for row in rows]
    colors = ["tab:green" if row["met"] else "tab:red" for row in rows]
    ratios.barh(range(len(rows)), [row["ratio"] for row in rows], color=colors)
    for index, row in enumerate(rows):
        ratios.plot([row["target"]] * 2, [index - 0.4, index + 0.4], color="black", lw=1)
    ratios.set_yticks(range(len(rows)), labels, fontsize=7)
    ratios.invert_yaxis()
    ratios.set_title("Ratio to the baseline of the same run (bar: target)")

    entries = []
    for name in names:
        for how, section in (backends[name].get("pickup") or {}).items():
            if isinstance(section, dict) and "p50_ms" in section:
                entries.append((f"{name} zart {how}", section))
        peer = _dig(backends[name], "peer", "pickup")
        if isinstance(peer, dict) and "p50_ms" in peer:
            entries.append((f"{name} pgqueuer", peer))
    positions = range(len(entries))
    pickup.barh([p - 0.2 for p in positions], [e[1]["p50_ms"] for e in entries], 0.4, label="p50")
    pickup.barh([p + 0.2 for p in positions], [e[1]["p95_ms"] for e in entries], 0.4, label="p95")
    pickup.set_yticks(list(positions), [e[0] for e in entries], fontsize=7)
    pickup.set_xscale("log")
    pickup.invert_yaxis()
    pickup.set_xlabel("ms from schedule commit to handler start")
    pickup.set_title("Pickup latency")
    pickup.legend(fontsize=7)

    where = doc["machine"]
    fig.suptitle(
        f"zart bench {doc['generated_at']} (commit {doc['commit']}"
        f"{', with local changes' if doc.get('dirty') else ''}): "
        f"{where['cpus']} x {where['cpu_model']}, Python {where['python']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _dig(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node
