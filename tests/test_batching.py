"""Group commit: concurrent submissions share flushes, and each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from zart_ref.batching import GroupCommit

LONG = 60.0  # a bound no test here reaches
SHORT = 0.2  # a bound the hanging flushes below run into


async def test_callers_waiting_together_share_one_flush() -> None:
    flushes: list[dict[str, int]] = []

    async def flush(items: dict[str, int]) -> dict[str, int]:
        flushes.append(dict(items))
        await asyncio.sleep(0)
        return {key: value * 10 for key, value in items.items() if key != "lost"}

    group: GroupCommit[str, int, int] = GroupCommit(flush, timeout=LONG)
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

    group: GroupCommit[str, int, int] = GroupCommit(flush, timeout=LONG, max_batch=2)
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

    group: GroupCommit[str, int, int] = GroupCommit(flush, timeout=LONG)
    with pytest.raises(ConnectionResetError):
        await group.submit("a", 1)
    assert await group.submit("a", 2) == 2


async def test_the_same_key_twice_waits_for_the_first_answer() -> None:
    seen: list[dict[str, int]] = []

    async def flush(items: dict[str, int]) -> dict[str, int]:
        seen.append(dict(items))
        return dict(items)

    group: GroupCommit[str, int, int] = GroupCommit(flush, timeout=LONG)
    assert await asyncio.gather(group.submit("a", 1), group.submit("a", 2)) == [1, 2]
    assert seen == [{"a": 1}, {"a": 2}]


async def test_a_hanging_flush_is_cut_at_the_earliest_deadline_of_its_batch() -> None:
    loop = asyncio.get_running_loop()
    cut_at: list[float] = []
    cut = asyncio.Event()

    async def flush(items: dict[str, int]) -> dict[str, int]:
        try:
            await asyncio.Event().wait()
        finally:
            cut_at.append(loop.time())
            cut.set()
        raise AssertionError("unreachable")

    group: GroupCommit[str, int, int] = GroupCommit(flush, timeout=SHORT)
    began = loop.time()
    with pytest.raises(TimeoutError):
        await group.submit("a", 1)
    async with asyncio.timeout(LONG):
        await cut.wait()
    assert len(cut_at) == 1 and cut_at[0] >= began + SHORT


async def test_an_item_whose_time_ran_out_in_the_queue_fails_unwritten() -> None:
    """The caller queued behind a flush that is slow to give up is failed, not written late."""
    flushed: list[list[str]] = []

    async def flush(items: dict[str, int]) -> dict[str, int]:
        flushed.append(list(items))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # Like a driver that must close its socket before the cancellation surfaces.
            await asyncio.shield(asyncio.sleep(2 * SHORT))
            raise
        raise AssertionError("unreachable")

    group: GroupCommit[str, int, int] = GroupCommit(flush, timeout=SHORT)
    first = asyncio.create_task(group.submit("a", 1))
    await asyncio.sleep(SHORT / 4)
    with pytest.raises(TimeoutError):
        await group.submit("b", 2)
    with pytest.raises(TimeoutError):
        await first
    assert flushed == [["a"]]
