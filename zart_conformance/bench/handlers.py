"""The handlers bench workers run: a no-op for throughput, a stamp for pickup latency.

Workers load this as ``--app zart_conformance.bench.handlers:registry``; loading it marks
the process ready (see stamps.py). The registry has no lifecycle listener: a worker builds
its per-task events only for listeners, and the bench measures a worker without them.
With ``$ZART_BENCH_STATEMENTS`` set (idle load on SQLite, which has no wire to count on),
every statement and COMMIT the process sends is counted into that file.
"""

from __future__ import annotations

import os
from typing import Any

from zart_ref import Registry, RetryPolicy, current_task

from .stamps import mark_ready, write_stamp

registry = Registry()
_ONCE = RetryPolicy(max_attempts=1)


@registry.task("noop", retry=_ONCE)
async def noop(payload: Any) -> None:
    """Nothing: what is measured is the queue, not the work."""


@registry.task("stamp", retry=_ONCE)
async def stamp(payload: Any) -> None:
    write_stamp(current_task().task.id)


def _count_statements(path: str) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from zart_ref.hotpath import HotConnection

    def count(*_args: Any) -> None:
        with open(path, "a") as out:
            out.write("1\n")

    event.listen(Engine, "before_cursor_execute", count)
    event.listen(Engine, "commit", count)
    # The hot path runs below SQLAlchemy's events: count its statements where they start.
    execute_raw = HotConnection.execute_raw

    def counted(self: HotConnection, sql: str, parameters: Any = ()) -> list[Any]:
        count()
        return execute_raw(self, sql, parameters)

    HotConnection.execute_raw = counted  # type: ignore[method-assign]


if os.environ.get("ZART_BENCH_STATEMENTS"):
    _count_statements(os.environ["ZART_BENCH_STATEMENTS"])
mark_ready()
