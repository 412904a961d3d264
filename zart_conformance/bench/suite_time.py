"""The conformance suite's wall time per backend: run it, or read a result file of it.

Optional (``--suite``): the whole suite takes minutes per backend. A ``--json`` file written
by ``zart-conformance run`` can be given instead; its scenario durations are summed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from zart_conformance.children import die_with_parent

from .cleanup import cleanup
from .procs import stop


def from_result_file(path: Path) -> dict[str, Any]:
    """The sum of scenario durations in a ``zart-conformance run --json`` file."""
    data = json.loads(path.read_text())
    results = data.get("results", [])
    ran = [r for r in results if r.get("outcome") != "not_applicable"]
    return {
        "backend": data.get("backend"),
        "scenarios": len(ran),
        "passed": sum(1 for r in ran if r.get("outcome") == "passed"),
        "seconds": round(sum(float(r.get("duration", 0)) for r in results), 1),
        "method": f"sum of scenario durations in {path.name}",
    }


async def run_suite(backend: str, run_dir: Path) -> dict[str, Any]:
    """Run the whole suite on ``backend`` as a user would, timing the command."""
    result_file = run_dir / f"suite-{backend}.json"
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from zart_conformance.cli import main; main()",
        "run",
        "--backend",
        backend,
        "--json",
        str(result_file),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    # A stopped bench stops the suite as Ctrl-C does: its runner stops its workers first.
    async with cleanup(lambda: stop([process], signal.SIGINT)):
        code = await process.wait()
    wall = time.monotonic() - began
    summary = from_result_file(result_file) if result_file.exists() else {}
    return {
        **summary,
        "seconds": round(wall, 1),
        "exit_code": code,
        "method": "wall time of zart-conformance run --backend " + backend,
    }
