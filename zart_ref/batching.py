"""Group commit: concurrent calls that each want one row written share one statement.

A caller submits its item and waits for its own answer. While one flush is in flight the
next items gather, and go together in the flush after it: under load a batch grows to the
number of callers waiting, with no timer and no added latency when the queue is quiet.

Every caller keeps its own time bound: a flush runs under the earliest deadline of its batch,
and an item whose deadline passed while it queued fails without being written. Without this a
caller queued behind a hanging flush would wait for that flush's bound and then its own. (No
timer per caller: the flush ahead ends by its own earliest deadline, which comes first.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
R = TypeVar("R")


class GroupCommit(Generic[K, V, R]):
    """Coalesces ``submit(key, value)`` calls into ``flush({key: value}) -> {key: answer}``.

    A key missing from the answer gets None. An exception from a flush is raised in every
    caller of that batch, so each one retries (or gives up) on its own; so is TimeoutError
    when a caller's ``timeout`` (seconds from its submit) runs out first.
    """

    def __init__(
        self,
        flush: Callable[[dict[K, V]], Awaitable[dict[K, R]]],
        *,
        timeout: float,
        max_batch: int = 64,
    ) -> None:
        self._flush = flush
        self._timeout = timeout
        self._max_batch = max_batch
        self._pending: dict[K, _Item[V, R]] = {}
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, key: K, value: V) -> R | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while key in self._pending:
            # The same key twice in one batch cannot get two answers: wait for the first.
            await asyncio.wait([self._pending[key].future])
        item = _Item(value, deadline, loop.create_future())
        self._pending[key] = item
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="zart-group-commit")
        try:
            return await item.future
        finally:
            # Cancelled while queued: the drain must not write it.
            if self._pending.get(key) is item:
                del self._pending[key]

    async def _drain(self) -> None:
        while self._pending:
            keys = list(self._pending)[: self._max_batch]
            batch = {key: self._pending.pop(key) for key in keys}
            now = asyncio.get_running_loop().time()
            for key, item in list(batch.items()):
                if item.deadline <= now and not item.future.done():
                    item.future.set_exception(TimeoutError())
                if item.future.done():
                    del batch[key]
            if not batch:
                continue
            try:
                async with asyncio.timeout_at(min(item.deadline for item in batch.values())):
                    answers = await self._flush({key: item.value for key, item in batch.items()})
            except asyncio.CancelledError:
                for item in [*batch.values(), *self._pending.values()]:
                    item.future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                for item in batch.values():
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            for key, item in batch.items():
                if not item.future.done():
                    item.future.set_result(answers.get(key))


@dataclass(frozen=True, slots=True)
class _Item(Generic[V, R]):
    value: V
    deadline: float  # event-loop time
    future: asyncio.Future[R | None]
