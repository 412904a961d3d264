"""PostgreSQL LISTEN: a session of its own, outside the work pool, that also carries idle polls.

A half-open connection answers nothing and reports nothing, so the session must send something
now and then to find out. The idle poll's read (``SQLBackend.pending``) goes over it while it is
up: the read that says whether there is work also proves the session alive, and an idle worker
sends one statement per poll interval instead of a poll and a keepalive. A keepalive goes out
only when nothing else has crossed the session for ``keepalive_after`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("zart.listen")
# Long enough that an idle worker polling at the default 5 s never needs a keepalive.
KEEPALIVE_AFTER = 10.0


class PgListener:
    """Subscribes to ``channel`` until cancelled, again after every drop, with backoff."""

    def __init__(
        self, dsn: str, channel: str, *, connect_timeout: float, statement_timeout: float
    ) -> None:
        self._dsn = dsn
        self.channel = channel
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self.keepalive_after = min(KEEPALIVE_AFTER, statement_timeout / 3)
        self._conn: Any = None  # the asyncpg connection while subscribed
        self._busy = asyncio.Lock()  # asyncpg runs one statement at a time per connection
        self._used = 0.0  # monotonic time the session last answered

    async def run(self, on_work: Callable[[], None], on_state: Callable[[str], None]) -> None:
        """Call ``on_work()`` on every notification and once per subscription (so nothing
        scheduled while it was down waits for the next poll); ``on_state`` hears
        "listening" and "lost: ..."."""
        import asyncpg  # type: ignore[import-untyped]

        failures = 0
        while True:
            try:
                await self._once(asyncpg, on_work, on_state)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                on_state(f"lost: {type(exc).__name__}: {exc}"[:300])
                failures += 1
                await asyncio.sleep(min(5.0, 0.05 * 2**failures))
            else:
                failures = 0

    async def fetch(self, sql: str, parameters: Sequence[Any]) -> Sequence[Sequence[Any]] | None:
        """The rows of ``sql`` with positional ``parameters``, read over the LISTEN session; None when it is down or busy (the
        caller uses its pool). A session that does not answer in time is closed, so the
        subscription starts again."""
        conn = self._conn
        if conn is None or self._busy.locked():
            return None
        try:
            async with self._busy, asyncio.timeout(self._statement_timeout):
                rows = await conn.fetch(sql, *parameters)
        except (OSError, TimeoutError):
            conn.terminate()  # run() reports the drop and subscribes again
            return None
        except Exception as exc:
            log.warning("zart: read over the LISTEN session failed, using the pool: %s", exc)
            return None
        self._used = time.monotonic()
        return [tuple(row) for row in rows]

    async def _once(
        self, asyncpg: Any, on_work: Callable[[], None], on_state: Callable[[str], None]
    ) -> None:
        """One subscription, until its connection drops or stops answering."""
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": f"zart-listener:{self.channel}"[:63]},
        )
        try:
            dropped = asyncio.Event()
            conn.add_termination_listener(lambda _conn: dropped.set())
            await conn.add_listener(self.channel, lambda *_args: on_work())
            self._conn, self._used = conn, time.monotonic()
            on_state("listening")
            on_work()
            while not dropped.is_set():
                quiet = self.keepalive_after - (time.monotonic() - self._used)
                if quiet > 0:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(quiet):
                            await dropped.wait()
                    continue
                async with self._busy, asyncio.timeout(self._statement_timeout):
                    await conn.fetchval("SELECT 1")
                self._used = time.monotonic()
            raise ConnectionResetError("listener connection closed")
        finally:
            self._conn = None
            conn.terminate()
