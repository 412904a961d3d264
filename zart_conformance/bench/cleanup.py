"""Clean-up that never hides why a block ended.

A finally that drops a schema on a server that just went away raises a second connection
error, and Python reports that one with the first buried under "During handling ...". Here
every step runs whatever happens; when the block failed, a failing step is noted on the
block's error instead of replacing it, and when the block succeeded, the first failing step
is raised once every step has run.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

Step = Callable[[], Any]


async def _run(steps: list[Step]) -> list[Exception]:
    failures = []
    for step in steps:
        try:
            result = step()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            failures.append(exc)
    return failures


@asynccontextmanager
async def cleanup(*steps: Step) -> AsyncIterator[list[Step]]:
    """Run ``steps`` (plain or async callables, in order) after the block, however it ends;
    the block may append more to the list it is given."""
    pending = list(steps)
    try:
        yield pending
    except BaseException as exc:
        for failure in await _run(pending):
            exc.add_note(f"clean-up after this error failed too: {failure!r}")
        raise
    failures = await _run(pending)
    if failures:
        raise failures[0]
