"""Group commit: concurrent submissions share flushes, and each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from zart_ref.batching import GroupCommit


async def test_callers_waiting_together_share_one_flush() -> None:
    flushes: list[dict[str, int]] = []

    async def flush(items: dict[str, int]) -> dict[str, int]:
        flushes.append(dict(items))
        await asyncio.sleep(0)
        return {key: value * 10 for key, value in items.items() if key != "lost"}

    group: GroupCommit[str, int, int] = GroupCommit(flush)
    answers = await asyncio.gather(
        *(group.submit(k, v) for k, v in [("a", 1), ("b", 2), ("lost", 3)])
    )
    assert answers == [10, 20, None]
    assert flushes == [{"a": 1, "b": 2, "lost": 3}]


async def test_items_arriving_during_a_flush_go_in_the_next_one() -> None:
    flushes: list[list[str]] = []
    release = asyncio.Event()

    async def flush(items: dict[str, int]) -> dict[str, int]:
        flushes.append(list(items))
        if len(flushes) == 1:
            await release.wait()
        return dict(items)

    group: GroupCommit[str, int, int] = GroupCommit(flush, max_batch=2)
    first = asyncio.create_task(group.submit("a", 1))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(group.submit(k, 0)) for k in "bcd"]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, *later)
    assert flushes == [["a"], ["b", "c"], ["d"]]


async def test_a_failed_flush_fails_only_its_own_callers() -> None:
    calls = 0

    async def flush(items: dict[str, int]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("lost the connection")
        return dict(items)

    group: GroupCommit[str, int, int] = GroupCommit(flush)
    with pytest.raises(ConnectionResetError):
        await group.submit("a", 1)
    assert await group.submit("a", 2) == 2


async def test_the_same_key_twice_waits_for_the_first_answer() -> None:
    seen: list[dict[str, int]] = []

    async def flush(items: dict[str, int]) -> dict[str, int]:
        seen.append(dict(items))
        return dict(items)

    group: GroupCommit[str, int, int] = GroupCommit(flush)
    assert await asyncio.gather(group.submit("a", 1), group.submit("a", 2)) == [1, 2]
    assert seen == [{"a": 1}, {"a": 2}]
