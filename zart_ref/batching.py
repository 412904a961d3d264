"""Group commit: concurrent calls that each want one row written share one statement.

A caller submits its item and waits for its own answer. While one flush is in flight the
next items gather, and go together in the flush after it: under load a batch grows to the
number of callers waiting, with no timer and no added latency when the queue is quiet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class GroupCommit(Generic[K, V, R]):
    """Coalesces ``submit(key, value)`` calls into ``flush({key: value}) -> {key: answer}``.

    A key missing from the answer gets None. An exception from a flush is raised in every
    caller of that batch, so each one retries (or gives up) on its own.
    """

    def __init__(
        self, flush: Callable[[dict[K, V]], Awaitable[dict[K, R]]], *, max_batch: int = 64
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._pending: dict[K, tuple[V, asyncio.Future[R | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, key: K, value: V) -> R | None:
        while key in self._pending:
            # The same key twice in one batch cannot get two answers: wait for the first.
            await asyncio.wait([self._pending[key][1]])
        future: asyncio.Future[R | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = (value, future)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="zart-group-commit")
        return await future

    async def _drain(self) -> None:
        while self._pending:
            keys = list(self._pending)[: self._max_batch]
            batch = {key: self._pending.pop(key) for key in keys}
            try:
                answers = await self._flush({key: value for key, (value, _) in batch.items()})
            except asyncio.CancelledError:
                for _, future in [*batch.values(), *self._pending.values()]:
                    future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                for _, future in batch.values():
                    if not future.done():
                        future.set_exception(exc)
                continue
            for key, (_, future) in batch.items():
                if not future.done():
                    future.set_result(answers.get(key))
